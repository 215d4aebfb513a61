#!/usr/bin/env bash
# Real-GPU check of the NVML collector (issue 3): two torch processes with different memory and
# load, collector.nvml.NvmlBackend for 30 s, then exact expectations (scripts/gpu_check.py says
# which). For a lent GPU machine with python3, torch, nvidia-ml-py, pyarrow and prometheus-client
# and no network: nothing is installed, the repository is put on PYTHONPATH. Under 5 minutes.
#
#   bash scripts/gpu-check.sh [--seconds 30] [--interval 2] [--light-gib 2] [--heavy-gib 6]
#   bash scripts/gpu-check.sh truth [--seconds 20] [--interval 2]   # kernel-busy vs SM activity (issue 17)
#
# Exit status: 0 all checks passed, 1 a check failed, 2 the machine lacks what the check needs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
    echo "gpu-check: $py not found" >&2
    exit 2
fi
missing=()
for mod in torch pynvml orjson msgspec jsonschema pyarrow; do
    "$py" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if ((${#missing[@]})); then
    echo "gpu-check: python modules missing: ${missing[*]} (this check installs nothing)" >&2
    exit 2
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: torch sees no CUDA device" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total \
    --format=csv,noheader || true

# The whole check is bounded: workers stop themselves, and this kills everything after 280 s.
exec timeout --kill-after=10 280 "$py" scripts/gpu_check.py "$@"
