#!/usr/bin/env bash
# The speed figures a GPU lease owes issues 24 and 29, as one call of under 10 minutes (each part has
# its own time limit, so a slow part costs only itself), from the repository root:
#   1. the tests marked cuda, the stacked seed group against each agent alone among them;
#   2. the official JAX code side by side at the paper configuration, one process per measurement, in
#      pairs: JAX's default matmul precision (TF32 on a GPU) against ours in fp32 (our default), then
#      JAX at highest (fp32) against ours with matmul_precision=high (TF32) (issue 24's goal: 2x);
#   3. where our graphed step's time goes at the paper configuration: the profiler's kernels, the host's
#      side, and how busy the kernels keep the GPU (issue 24: what bounds 400 steps/s);
#   4. seed groups at the paper configuration, CUDA graphs: one run alone, then stacked groups of
#      N = 1, 2, 4, 8, 16 seeds: seed-steps/s, x one run, peak memory per seed (issue 29's goal: 4x at N = 8).
# A part cut short by its limit still prints what it measured (the pairs, the group sizes so far).
# Needs no simulator. Before the lease, here: `bash benchmarks/gpu_pack_official.sh` (packs .whl/official);
# then on the GPU, carrying .whl:  bash benchmarks/gpu_speed.sh
# A dry run of the same flow on a CPU, small (OFFICIAL_PYTHON: an interpreter with jax, as the GPU's
# python3 has; the packed wheels supply the rest), in about 3 minutes:
#   DEVICE=cpu OFFICIAL_PYTHON=/path/to/python bash benchmarks/gpu_speed.sh
# Logs and JSON go to $OUT (or ./gpu_speed_out); BUDGET (seconds, default 560) bounds the whole call;
# PARTS (default "tests official profile groups") picks parts, e.g. two calls on one warm machine:
#   PARTS="tests official profile" bash benchmarks/gpu_speed.sh;  PARTS=groups bash benchmarks/gpu_speed.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_speed_out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; BUDGET=${BUDGET:-560}; OFFICIAL_PYTHON=${OFFICIAL_PYTHON:-python3}
PARTS=" ${PARTS:-tests official profile groups} "
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
if [ "$DEVICE" = cpu ]; then  # the dry run's sizes
  CONFIG=small-cpu; SEEDS=1,2; GROUP_STEPS=3; COMPILE=on; MODES=compiled,compiled@high; STEPS=10; WARMUP=2
  PROFILED=compiled
else
  . benchmarks/require_cuda.sh && require_cuda gpu_speed
  CONFIG=paper; SEEDS=1,2,4,8,16; GROUP_STEPS=60; COMPILE=graphs; MODES=graphs,graphs@high; STEPS=200; WARMUP=10
  PROFILED=graphs
fi
deadline=$((SECONDS + BUDGET)); status=0

# part NAME CAP_SECONDS COMMAND...: run it with at most CAP seconds and what the budget leaves, log to $OUT
part() {
  local name=$1 cap=$2; shift 2
  [[ "$PARTS" == *" $name "* ]] || return 0
  local left=$((deadline - SECONDS - 5)); local limit=$((cap < left ? cap : left))
  echo "== $name (at most $limit s)"
  if [ "$limit" -le 10 ]; then echo "   skipped: the budget is spent"; status=1; return; fi
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local code=${PIPESTATUS[0]}
  echo "   $name: exit $code, $((SECONDS - start)) s"
  [ "$code" = 0 ] || status=1
}

part tests 150 python3 -m pytest -m cuda -q -n 0 -p no:cacheprovider tests/test_cuda.py

site=/tmp/official-site
if [[ "$PARTS" == *" official "* ]]; then
  rm -rf "$site"
  "$OFFICIAL_PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
      .whl/official/wheels/*.whl > "$OUT/official_wheels.log" 2>&1 \
    || { echo "   the official side's wheels did not install (.whl/official from gpu_pack_official.sh?):"; \
         tail -n 5 "$OUT/official_wheels.log"; status=1; }
fi
part official 220 python3 benchmarks/vs_official.py --device "$DEVICE" --config "$CONFIG" \
    --modes "$MODES" --official-modes jit,jit@highest --rounds 1 --steps "$STEPS" --warmup "$WARMUP" \
    --official-python "$(command -v "$OFFICIAL_PYTHON")" --official-path "$site" \
    --official-src .whl/official/src --windows .whl/official/windows.npz --scratch /tmp/rql-bench \
    --save "$OUT/vs_official.json"
part profile 100 python3 benchmarks/train_throughput.py --device "$DEVICE" --config "$CONFIG" \
    --modes "$PROFILED" --steps "$STEPS" --warmup "$WARMUP" --rounds 1 --profile
part groups 300 python3 benchmarks/seed_groups.py --device "$DEVICE" --config "$CONFIG" --seeds "$SEEDS" \
    --compile "$COMPILE" --ways stacked --single --steps "$GROUP_STEPS"
exit $status
