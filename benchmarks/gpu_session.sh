#!/usr/bin/env bash
# The one script a session with a lent GPU runs (device tool: `bash benchmarks/gpu_session.sh`):
# the differential check of every kernel on CUDA, then every benchmark, each stage under its own
# time limit so one slow stage cannot eat the whole lease. Results land in $OUT (or ./gpu-out):
#   env.txt        device, driver and versions
#   check.json     python -m fusedloss check --device cuda (the kernels against the reference)
#   bench_*.csv    one CSV per benchmark family, with device and versions in every row
# The device machine has no network: fusedloss runs from the working tree (PYTHONPATH), and a
# package it lacks (pytorch-crf for the CRF peer) travels as a wheel in .whl/ (device README).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u +%Y-%m-%dT%H:%MZ; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

status=0
timeout "${CHECK_SECONDS:-150}" python3 -m fusedloss check --device cuda \
  --examples "${CHECK_EXAMPLES:-40}" --json "$OUT/check.json" || status=1
for script in benchmarks/bench_*.py; do
  timeout "${BENCH_SECONDS:-120}" python3 "$script" --csv "$OUT/$(basename "$script" .py).csv" || status=1
done
exit $status
