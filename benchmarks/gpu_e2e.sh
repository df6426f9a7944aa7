#!/usr/bin/env bash
# The command line end to end on a CUDA machine (about 5 minutes), after benchmarks/gpu_check.sh:
# generate a small dataset, train with compile=graphs (the fast mode, so it is what a GPU user runs),
# resume, evaluate a bundled agent, fine-tune online (graphs too), film a rollout through EGL. Logs go
# to $OUT (or ./gpu_e2e_out). Where the image lacks the simulators, carry what benchmarks/gpu_pack_deps.sh
# made (.whl and .gl); this unpacks them first.
#   bash benchmarks/gpu_e2e.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_e2e_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
if [ -f .whl/site.tar.xz ]; then mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz && export PYTHONPATH=/tmp/site:$PWD; fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
. benchmarks/require_cuda.sh && require_cuda gpu_e2e
R=$(mktemp -d); C="python3 -m rql_cli"
NET="--set actor_hidden_dims=256,256,256,256 --set value_hidden_dims=256,256,256,256 --set ensemble_size=2"
status=0
step() { echo "== $*"; local t=$SECONDS; "$@" >> "$OUT/e2e.log" 2>&1 || { status=1; echo "   FAILED (see e2e.log)"; }; echo "   $((SECONDS - t)) s"; }
step $C data generate cube-single-play-v0 --episodes 8 --val-episodes 1 --workers 8 --seed 0 --out $R/data -q
step $C train --dataset cube-single-play-v0 --dataset-dir $R/data --steps 2000 --eval-every 1000 --eval-episodes 8 \
    --eval-envs 8 --device cuda --out $R/run $NET --set save_interval=1000 --set compile=graphs -q
step $C train --resume $R/run --steps 3000 --device cuda -q
step $C eval --checkpoint cube-single-task1-rql-cpu --episodes 24 --envs 8 --device cuda -q
step $C finetune --checkpoint $R/run --online-steps 400 --eval-episodes 4 --device cuda --out $R/ft --set compile=graphs -q
step $C rollout --checkpoint cube-single-task1-rql-cpu --episodes 1 --max-steps 60 --render --out "$OUT/rollout.gif" --device cuda -q
cp $R/run/metrics.csv "$OUT/train_metrics.csv" 2>/dev/null && tail -n 2 $R/run/metrics.csv
tail -n 20 "$OUT/e2e.log"
exit $status
