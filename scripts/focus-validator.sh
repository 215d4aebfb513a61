#!/usr/bin/env bash
# The official FinOps FOCUS validator, in its own environment, run offline.
#
# usage: scripts/focus-validator.sh install
#        scripts/focus-validator.sh run <data.parquet|data.csv> <out.xml> [extra focus-validator args...]
#        scripts/focus-validator.sh python      # prints the environment's python (exit 1 if not installed)
#
#   install  creates $FOCUS_VENV (default <repo>/.focus-venv) with Python >= 3.12 and installs the
#            pinned validator; a no-op (well under a second) when the pins are already installed.
#   run      validates one file against FOCUS 1.2 (the validator picks the reader by the file's
#            extension, .csv or .parquet) and writes JUnit-style XML to <out.xml>. Extra arguments
#            go to the validator as they are (e.g. --applicability-criteria A,B).
#            The validator exits 0 even when rules fail: read the `failures` and `errors`
#            attributes of the XML's <testsuites> element (warehouse.focus.read_validator_report).
#
# Why its own environment: focus-validator 2.x needs Python >= 3.12 (on 3.11 pip silently falls
# back to 1.0.0) and pins numpy/pyarrow versions that clash with the project's .venv.
#
# Environment: FOCUS_VENV (where the environment lives), FOCUS_PYTHON (a python >= 3.12 to build
# it with; else python3.12/3.13 on PATH, else pyenv's ~/.pyenv/versions/3.1[2-9].*).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
FOCUS_VENV="${FOCUS_VENV:-$REPO/.focus-venv}"

# Pins: the validator version is the contract (DESIGN §9); numpy/pyarrow keep its resolver happy.
VALIDATOR_VERSION="2.2.1"
FOCUS_VERSION="1.2.0.1"
PINS=("focus-validator==$VALIDATOR_VERSION" "numpy<2" "pyarrow<20")
# The whole set those pins resolved to when the export was last validated: a new release of a
# dependency (polars, duckdb, pandera...) cannot change the verdict behind our back.
LOCK=(
  annotated-types==0.8.0 attrs==26.1.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 ddt==1.7.2
  duckdb==1.5.6 graphviz==0.21 idna==3.20 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  multimethod==2.0.2 mypy_extensions==1.2.0 numpy==1.26.4 packaging==26.4 pandas==2.3.3 pandasql==0.7.3
  pandera==0.26.1 polars==1.44.2 polars-runtime-32==1.44.2 pyarrow==19.0.1 pydantic==2.14.4
  pydantic_core==2.50.5 python-dateutil==4.0.0 pytz==2025.2 PyYAML==6.0.4 referencing==0.37.0
  requests==2.34.2 rpds-py==2026.9.1 SQLAlchemy==2.1.9 sqlglot==27.29.0 tabulate==0.10.0
  typeguard==4.6.1 typing-inspect==0.9.0 typing-inspection==0.4.5 typing_extensions==4.16.0
  tzdata==2026.6 urllib3==2.8.0
)
STAMP="$FOCUS_VENV/.gpuledger-pins"

log() { echo "focus-validator.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A python that really runs (pyenv shims exist on PATH for versions that are not selected and
# fail when called) and is >= 3.12.
usable_python() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  local cand
  if [[ -n "${FOCUS_PYTHON:-}" ]]; then
    usable_python "$FOCUS_PYTHON" || die "FOCUS_PYTHON=$FOCUS_PYTHON is not a working Python >= 3.12"
    echo "$FOCUS_PYTHON"
    return
  fi
  for cand in python3.12 python3.13 python3.14; do
    if command -v "$cand" >/dev/null 2>&1 && usable_python "$cand"; then
      command -v "$cand"
      return
    fi
  done
  for cand in "$HOME"/.pyenv/versions/3.1[2-9].*/bin/python /usr/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9]; do
    if [[ -x "$cand" ]] && usable_python "$cand"; then
      echo "$cand"
      return
    fi
  done
  die "no Python >= 3.12 found (tried FOCUS_PYTHON, python3.12/3.13/3.14 on PATH, ~/.pyenv/versions/3.12+, /usr/bin, /usr/local/bin); focus-validator $VALIDATOR_VERSION needs one: install one (e.g. 'pyenv install 3.12') or set FOCUS_PYTHON"
}

installed() {
  [[ -x "$FOCUS_VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]} ${LOCK[*]}" ]] \
    && "$FOCUS_VENV/bin/python" -c 'import focus_validator' >/dev/null 2>&1
}

cmd_install() {
  if installed; then
    log "already installed in $FOCUS_VENV (${PINS[*]}, locked)"
    return
  fi
  local py
  py="$(find_python)"
  log "creating $FOCUS_VENV with $py ($("$py" --version 2>&1))"
  rm -rf "$FOCUS_VENV"
  "$py" -m venv "$FOCUS_VENV"
  printf '%s\n' "${LOCK[@]}" >"$FOCUS_VENV/constraints.txt"
  "$FOCUS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$FOCUS_VENV/constraints.txt" "${PINS[@]}" \
    || die "pip could not install ${PINS[*]} (constraints $FOCUS_VENV/constraints.txt) into $FOCUS_VENV"
  local got
  got="$("$FOCUS_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("focus-validator"))')"
  [[ "$got" == "$VALIDATOR_VERSION" ]] || die "installed focus-validator $got, expected $VALIDATOR_VERSION"
  echo "${PINS[*]} ${LOCK[*]}" >"$STAMP"
  log "installed focus-validator $got in $FOCUS_VENV"
}

cmd_run() {
  [[ $# -ge 2 ]] || die "usage: $0 run <data.parquet|data.csv> <out.xml> [extra focus-validator args...]"
  local data="$1" out="$2"
  shift 2
  installed || die "focus-validator is not installed in $FOCUS_VENV: run 'scripts/focus-validator.sh install'"
  [[ -f "$data" ]] || die "data file not found: $data"
  case "$data" in
    *.csv | *.parquet) ;;
    *) die "data file must end in .csv or .parquet (the validator picks its reader by extension): $data" ;;
  esac
  data="$(cd "$(dirname "$data")" && pwd)/$(basename "$data")"
  mkdir -p "$(dirname "$out")"
  out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
  rm -f "$out"
  # It opens focus_validator/rules/currency_codes.csv relative to the working directory.
  local site
  site="$("$FOCUS_VENV/bin/python" -c 'import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))')"
  (
    cd "$site"
    "$FOCUS_VENV/bin/focus-validator" \
      --data-file "$data" \
      --validate-version "$FOCUS_VERSION" \
      --focus-dataset CostAndUsage \
      --block-download \
      --output-type unittest \
      --output-destination "$out" \
      "$@"
  )
  [[ -s "$out" ]] || die "the validator wrote no report to $out"
}

case "${1:-}" in
  install) cmd_install ;;
  run)
    shift
    cmd_run "$@"
    ;;
  python)
    installed || die "focus-validator is not installed in $FOCUS_VENV: run 'scripts/focus-validator.sh install'"
    echo "$FOCUS_VENV/bin/python"
    ;;
  *) die "usage: $0 install | run <data.parquet|data.csv> <out.xml> [extra args...] | python" ;;
esac
