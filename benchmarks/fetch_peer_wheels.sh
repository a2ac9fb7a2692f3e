#!/usr/bin/env bash
# Downloads, on a machine with a package registry, the peers the GPU machine lacks into .whl/
# (git-ignored), as wheels for its Python 3.12 on x86-64: they travel beside the working tree to
# the GPU machine, where benchmarks/gpu_session.sh installs them without a network.
#   bash benchmarks/fetch_peer_wheels.sh
# Only the peers themselves: their needs (torch, triton) are already on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=(liger-kernel cut-cross-entropy pytorch-crf)
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${PEERS[@]}"
ls -l .whl
