#!/usr/bin/env bash
# One short check on a CUDA machine (under 8 minutes on one GPU), from the repository root:
#   1. the tests marked `cuda` (same maths as the CPU, no host sync in a step, graphs replay, checkpoints);
#   2. update throughput at the paper configuration, eager / compiled / CUDA-graphed, as a table.
# Usage: bash benchmarks/gpu_check.sh [extra train_throughput.py flags]
# On a machine without CUDA it says so and exits 2 (CI runs the same benchmark on the CPU instead).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/require_cuda.sh && require_cuda gpu_check
echo "== tests marked cuda"
# A failing test does not stop the check: the throughput table is worth having from the same lease.
tests_status=0
python -m pytest -m cuda -q -n 0 -p no:cacheprovider tests/test_cuda.py || tests_status=$?
echo "== throughput, paper configuration (4x512, K=10, F=10, h=5, B=256)"
python benchmarks/train_throughput.py --device cuda --config paper --modes eager,compiled,graphs \
    --steps 200 --warmup 10 --rounds 2 "$@"
exit "$tests_status"
