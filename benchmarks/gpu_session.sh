#!/usr/bin/env bash
# The one script a session with a lent GPU runs, with .whl carried beside the tree (made here by
# `bash benchmarks/fetch_peer_wheels.sh`):
#   device tool: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Stages, each under its own time limit so one slow stage cannot eat the lease (8 minutes at most
# in all by default): the peers installed from the wheels; the test suite on CUDA tensors
# through the compiled kernels; the differential check of every kernel on CUDA; every benchmark
# family with its peers (python -m fusedloss bench). Results, in $OUT (or ./gpu-out), at most 8 files (what the device tool returns):
#   env.txt             device, driver and versions
#   tests.txt           the CUDA test suite's summary (pytest's short report)
#   check.json          python -m fusedloss check --device cuda (the kernels against the reference)
#   gpu-results.tar.gz  every stage's log, the suite's junit XML and bench/ (results.md,
#                       results.csv with device, versions and date in every row, and the plots
#                       where matplotlib is importable); packed on exit, also when a limit cut a
#                       stage short
# The machine has no network: fusedloss runs from the working tree (PYTHONPATH).
set -u -o pipefail
OUT=${OUT:-gpu-out}
RESULTS=$(mktemp -d)
mkdir -p "$OUT"
trap 'cp "$RESULTS/check.json" "$RESULTS/env.txt" "$RESULTS/tests.txt" "$OUT/" 2>/dev/null; tar -czf "$OUT/gpu-results.tar.gz" -C "$RESULTS" .' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  python3 -c "import liger_kernel, cut_cross_entropy, torchcrf; print('peers importable: liger-kernel, cut-cross-entropy, pytorch-crf')"
  date -u +%Y-%m-%dT%H:%MZ; } > "$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

# Every kernel variant compiles on first use; the suite runs first, so the check and the
# benchmarks find most of them in triton's cache. Compiling is CPU work, so the suite runs in
# TEST_WORKERS processes (pytest-xdist, on that machine's image) sharing the one GPU and triton's
# on-disk cache. It stops after TEST_MAXFAIL failures, not at the first: a lease's one run should
# show every failing family, and the check and the benchmarks still get their time.
status=0
timeout "${TEST_SECONDS:-180}" python3 -m pytest -q --maxfail "${TEST_MAXFAIL:-25}" --device cuda -p no:cacheprovider \
  -n "${TEST_WORKERS:-8}" --dist worksteal \
  -r fEs --junitxml="$RESULTS/tests.xml" 2>&1 | tee "$RESULTS/tests.log" || status=1
tail -n 40 "$RESULTS/tests.log" > "$RESULTS/tests.txt"
timeout "${CHECK_SECONDS:-80}" python3 -m fusedloss check --device cuda \
  --examples "${CHECK_EXAMPLES:-20}" --json "$RESULTS/check.json" 2>&1 | tee "$RESULTS/check.log" \
  || status=1
# Every family in one process and run, the most asked-about first (the issues' GPU targets:
# cross entropy and linear cross entropy, then CTC, the CRF and the sampled losses; the
# pointwise losses, whose per-shape torch.compile is slow to warm, last); the table and the CSV
# are rewritten after each row, so a run the limit cuts short keeps what it measured.
timeout "${BENCH_SECONDS:-220}" python3 -m fusedloss bench --out "$RESULTS/bench" \
  --family cross_entropy linear_cross_entropy ctc crf hsigmoid_nce pointwise 2>&1 \
  | tee "$RESULTS/bench.log" || status=1
exit $status
