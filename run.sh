#!/usr/bin/env bash
# One entry point that sets itself up on a fresh machine:
#   bash run.sh check [ARGS...]   the kernels against the reference (python -m fusedloss check)
#   bash run.sh test  [ARGS...]   the test suite (what CI runs)
#   bash run.sh bench [ARGS...]   the benchmarks (meaningful on a CUDA machine)
# It makes .venv (seeing the system's packages, so an installed CUDA torch is used as is),
# installs the pinned CPU build of torch only where no torch is importable, then the package.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv --system-site-packages .venv
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
if ! "$PY" -c "import fusedloss, pytest, hypothesis, torchcrf" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[test]"
fi

command=${1:-test}
shift || true
case "$command" in
  check) exec "$PY" -m fusedloss check "$@" ;;
  test)  exec "$PY" -m pytest -q "$@" ;;
  bench) exec "$PY" benchmarks/run_all.py "$@" ;;
  *) echo "usage: bash run.sh check|test|bench [ARGS...]" >&2; exit 2 ;;
esac
