#!/usr/bin/env bash
# The one script a session with a lent GPU runs (device tool: `bash benchmarks/gpu_session.sh`):
# the differential check of every kernel on CUDA, then every benchmark, each stage under its own
# time limit so one slow stage cannot eat the whole lease. Results, in $OUT (or ./gpu-out):
#   env.txt             device, driver and versions
#   check.json          python -m fusedloss check --device cuda (the kernels against the reference)
#   gpu-results.tar.gz  every stage's log and each benchmark family's CSV (device and versions in
#                       every row); packed on exit, also when a limit cut a stage short
# The device tool returns at most 8 files, hence the archive. The machine has no network:
# fusedloss runs from the working tree (PYTHONPATH), and a package it lacks (pytorch-crf for the
# CRF peer) travels as a wheel in .whl/ (device README).
set -u -o pipefail
OUT=${OUT:-gpu-out}
RESULTS=$(mktemp -d)
mkdir -p "$OUT"
trap 'cp "$RESULTS/check.json" "$RESULTS/env.txt" "$OUT/" 2>/dev/null; tar -czf "$OUT/gpu-results.tar.gz" -C "$RESULTS" .' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u +%Y-%m-%dT%H:%MZ; } > "$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

# Stage limits sum to under the device tool's 10 minutes a command (every kernel variant is
# compiled on first use, so the check's cases cost compile time too).
status=0
timeout "${CHECK_SECONDS:-170}" python3 -m fusedloss check --device cuda \
  --examples "${CHECK_EXAMPLES:-20}" --json "$RESULTS/check.json" 2>&1 | tee "$RESULTS/check.log" \
  || status=1
for script in benchmarks/bench_*.py; do
  name=$(basename "$script" .py)
  timeout "${BENCH_SECONDS:-60}" python3 "$script" --csv "$RESULTS/$name.csv" 2>&1 \
    | tee "$RESULTS/$name.log" || status=1
done
exit $status
