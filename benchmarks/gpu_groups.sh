#!/usr/bin/env bash
# The learning check of a seed group on a CUDA machine (issue 29): a 4-seed group against the same four
# seeds trained alone, cube-single task 2 at the bundled agents' size (4x256, K=2), each seed then scored
# over EPISODES episodes with its Wilson interval. The group and the four single runs train at the same
# time on the one GPU (graphs), so the check takes about one run's time; the table prints each seed's
# success in the group and alone. Sizes can be cut for a smoke run on a CPU:
#   bash benchmarks/gpu_groups.sh                                   # on the GPU: 40,000 steps, 100 episodes
#   DEVICE=cpu STEPS=20 EPISODES=2 DATA_EPISODES=4 bash benchmarks/gpu_groups.sh   # the flow, in a minute
# Logs and the JSON reports go to $OUT (or ./gpu_groups_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_groups_out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-40000}; EPISODES=${EPISODES:-100}; DATA_EPISODES=${DATA_EPISODES:-200}
COMPILE=$([ "$DEVICE" = cpu ] && echo off || echo graphs)
WORKERS=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
if [ "$DEVICE" != cpu ]; then
  . benchmarks/require_cuda.sh && require_cuda gpu_groups
fi
R=$(mktemp -d); C="python3 -m rql_cli"
COMMON=(--dataset cube-single-play-v0 --dataset-dir "$R/data" --task 2 --steps "$STEPS" --eval-episodes 0
        --device "$DEVICE" --set "actor_hidden_dims=[256,256,256,256]" --set "value_hidden_dims=[256,256,256,256]"
        --set ensemble_size=2 --set "compile=\"$COMPILE\"" --set threads=1 -q)
start=$SECONDS
echo "== data: $DATA_EPISODES episodes on $WORKERS workers"
$C data generate cube-single-play-v0 --episodes "$DATA_EPISODES" --workers "$WORKERS" --seed 0 --out "$R/data" -q \
  > "$OUT/data.log" 2>&1 || { tail -n 20 "$OUT/data.log"; exit 1; }
echo "   $((SECONDS - start)) s"
echo "== training: the group --seeds 0-3 and seeds 0..3 alone, $STEPS steps each, at the same time"
start=$SECONDS
$C train "${COMMON[@]}" --seeds 0-3 --out "$R/group" > "$OUT/group.log" 2>&1 & pids=($!)
for s in 0 1 2 3; do
  $C train "${COMMON[@]}" --seed $s --out "$R/alone$s" > "$OUT/alone$s.log" 2>&1 & pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "   $((SECONDS - start)) s"
[ $status = 0 ] || { tail -n 20 "$OUT"/*.log; exit 1; }
echo "== evaluation: $EPISODES episodes per seed (seeds 0..$((EPISODES - 1)) of the env), all at once"
start=$SECONDS
ENVS=$(( EPISODES < 8 ? EPISODES : 8 ))
$C eval --checkpoint "$R/group" --episodes "$EPISODES" --envs "$ENVS" --device "$DEVICE" \
  --json "$OUT/group.json" > "$OUT/eval_group.log" 2>&1 & pids=($!)
for s in 0 1 2 3; do
  $C eval --checkpoint "$R/alone$s" --episodes "$EPISODES" --envs "$ENVS" --device "$DEVICE" \
    --json "$OUT/alone$s.json" > "$OUT/eval_alone$s.log" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "   $((SECONDS - start)) s"
cat "$OUT/eval_group.log"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
group = json.loads((out / "group.json").read_text())["seeds"]  # {seed: its report}


def score(report: dict) -> tuple[float, float, float]:
    task = report["tasks"][0]
    return (task["success_rate"], *task["success_ci95"])


def shown(row: tuple[float, float, float]) -> str:
    return f"{row[0]:.0%} [{row[1]:.0%}, {row[2]:.0%}]"


print(f"{'seed':>4}  {'in the group':>18}  {'alone':>18}  intervals overlap")
for s in range(4):
    ours, alone = score(group[str(s)]), score(json.loads((out / f"alone{s}.json").read_text()))
    overlap = ours[1] <= alone[2] and alone[1] <= ours[2]
    print(f"{s:>4}  {shown(ours):>18}  {shown(alone):>18}  {'yes' if overlap else 'NO'}")
PY
exit $status
