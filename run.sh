#!/usr/bin/env bash
# One entry point that sets itself up on a fresh machine:
#   bash run.sh check [ARGS...]   the kernels against the reference (python -m fusedloss check)
#   bash run.sh test  [ARGS...]   the test suite, a worker per core (what CI runs, on both stacks below)
#   bash run.sh compile [ARGS...] every kernel compiled ahead of time for sm_90 (no GPU needed; --arch 80: sm_80)
#   bash run.sh traffic [ARGS...] bytes each loss moves fwd+bwd, counted on the CPU (--check: ceilings)
#   bash run.sh bench [ARGS...]   python -m fusedloss bench (on a CPU only --quick: tiny sizes)
#   bash run.sh wheel             pip wheel . installs into a fresh venv and runs check there
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
  test)    exec "$PY" -m pytest -q -n auto --dist worksteal "$@" ;;  # a worker per core; idle workers take queued tests from busy ones (pytest-xdist)
  compile) exec "$PY" benchmarks/compile_sm90.py "$@" ;;
  traffic) exec "$PY" benchmarks/traffic.py "$@" ;;
  bench)   exec "$PY" -m fusedloss bench "$@" ;;
  wheel)   # `pip wheel .` as a user runs it (isolated build), the wheel installed alone into a
           # fresh venv, then imported and checked from outside the source tree. Its
           # dependencies (torch, triton, numpy, hypothesis) come from the stack's site folders
           # through a path file rather than PyPI: installing torch and triton again would cost
           # minutes and test pip, not this package. Those folders' own .pth files are not read
           # that way, so the stack's editable fusedloss stays out, and --no-deps keeps pip from
           # touching it; the import below asserts the wheel's copy is what runs.
           dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
           "$PY" -m pip wheel -q --no-deps -w "$dir/dist" .
           "$PY" -m venv --without-pip "$dir/venv"
           fresh_site=$("$dir/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
           "$PY" -c "import site; print(*site.getsitepackages(), sep='\n')" > "$fresh_site/stack-dependencies.pth"
           "$PY" -m pip --python "$dir/venv/bin/python" install -q --no-deps "$dir"/dist/*.whl
           cd "$dir"
           "$dir/venv/bin/python" -c "import fusedloss, pathlib, sys; p = pathlib.Path(fusedloss.__file__).parent; assert p.is_relative_to(sys.prefix), p; assert (p / 'py.typed').exists(); print('fusedloss', fusedloss.__version__, 'from', p)"
           "$dir/venv/bin/python" -m fusedloss check --examples 2 "$@" ;;
  *) echo "usage: [FUSEDLOSS_STACK=newest|gpu-machine] bash run.sh check|test|compile|traffic|bench|wheel [ARGS...]" >&2; exit 2 ;;
esac
