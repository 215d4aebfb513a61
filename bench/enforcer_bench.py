"""Enforcer offline evaluation on the real GenTD26 trace (issue 10, item 8): the table for
bench/RESULTS.md and the frontier plot for docs/enforcer.md.

    PYTHONPATH=. .venv/bin/python bench/enforcer_bench.py [TRACE] [--plot docs/enforcer_frontier.png]

TRACE defaults to the packaged copy (collector/data/gentd26, the same files as
../shared/data/traces/alibaba-genai-2026).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.traces import DATA_DIR
from gpuledger.config import EnforcerConfig
from pipeline.enforcer_eval import report


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", default=str(DATA_DIR))
    ap.add_argument("--plot", default="docs/enforcer_frontier.png")
    ap.add_argument("--cycle-s", type=float, default=300.0)
    ap.add_argument("--json", help="also write every number here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = report(args.trace, EnforcerConfig(), cycle_s=args.cycle_s, do_sweep=True, plot=args.plot)
    took = time.perf_counter() - t0
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} CPUs), {took:.0f} s")
    print(f"# {out['trace']}: {out['pods']} pods, {out['hours']} h, policy cycle {out['cycle_s']:g} s\n")
    print(out["table"])
    print()
    print(out["sweep_table"])
    print(f"\nfrontier plot: {out['plot']}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in out.items() if not k.endswith("table")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
