#!/usr/bin/env bash
# One entry point that sets itself up on a fresh machine:
#   bash run.sh check [ARGS...]   the kernels against the reference (python -m fusedloss check)
#   bash run.sh test  [ARGS...]   the test suite, a worker per core (what CI runs, on both stacks below)
#   bash run.sh compile [ARGS...] every kernel compiled ahead of time for sm_90 (no GPU needed)
#   bash run.sh traffic [ARGS...] bytes each loss moves fwd+bwd, counted on the CPU (--check: ceilings)
#   bash run.sh bench [ARGS...]   python -m fusedloss bench (on a CPU only --quick: tiny sizes)
# FUSEDLOSS_STACK picks the software stack, each in its own virtual environment:
#   newest (default)  .venv: the pinned CPU build of torch 2.13.0 and the triton it takes, made
#                     seeing the system's packages so an installed CUDA torch is used as is (it
#                     installs torch only where none is importable)
#   gpu-machine       .venv-gpu-machine: torch 2.11.0 + triton 3.6.0 + the newest numpy +
#                     transformers 5.17.0, the GPU machine's stack (torch's CUDA build: it installs and runs on a CPU machine)
set -euo pipefail
cd "$(dirname "$0")"

stack=${FUSEDLOSS_STACK:-newest}
case "$stack" in
  newest)
    VENV=.venv
    [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
      "$VENV/bin/python" -m pip install -q torch==2.13.0
    fi ;;
  gpu-machine)
    VENV=.venv-gpu-machine
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    if ! "$VENV/bin/python" -c "import torch, triton; assert torch.__version__.startswith('2.11.0') and triton.__version__ == '3.6.0'" 2>/dev/null; then
      "$VENV/bin/python" -m pip install -q torch==2.11.0 triton==3.6.0 "numpy>=2.4" transformers==5.17.0
    fi ;;
  *) echo "FUSEDLOSS_STACK must be newest or gpu-machine, not '$stack'" >&2; exit 2 ;;
esac
PY=$VENV/bin/python
if ! "$PY" -c "import fusedloss, pytest, xdist, hypothesis, torchcrf, transformers, accelerate" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[test]"
fi

command=${1:-test}
shift || true
case "$command" in
  check)   exec "$PY" -m fusedloss check "$@" ;;
  test)    exec "$PY" -m pytest -q -n auto "$@" ;;  # one worker per core (pytest-xdist)
  compile) exec "$PY" benchmarks/compile_sm90.py "$@" ;;
  traffic) exec "$PY" benchmarks/traffic.py "$@" ;;
  bench)   exec "$PY" -m fusedloss bench "$@" ;;
  *) echo "usage: [FUSEDLOSS_STACK=newest|gpu-machine] bash run.sh check|test|compile|traffic|bench [ARGS...]" >&2; exit 2 ;;
esac
