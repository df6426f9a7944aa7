#!/usr/bin/env bash
# Run HERE (a machine with a package index), before a GPU lease: packs what the official JAX code needs
# on the lent GPU machine for benchmarks/gpu_speed.sh's side-by-side part (issue 24), into .whl/official/
# (git-ignored; carry .whl):
#   src/          the official source (aoberai/rql at 229c956, from benchmarks/vs_official.py's scratch folder)
#   windows.npz   the arrays its sampler reads: a 5-episode cube-single set as `rql train` loads it
#   wheels/       what its update imports and the GPU image lacks: distrax, tfp-nightly (distrax's
#                 probability substrate), ml_collections, dm-tree, gast and decorator, for CPython 3.12 on
#                 x86-64 (the image has jax with CUDA, flax, optax, chex, einops, absl-py, cloudpickle, six,
#                 wrapt, attrs and PyYAML). The versions are the ones the CPU set-up resolved.
# About 8 MB: with the tracked tree (55 MB, mostly checkpoints/) it stays under the 64 MiB a lease
# carries; the simulators' pack (gpu_pack_deps.sh, 17 MB) no longer fits beside it, and nothing here
# needs them (the windows are made here).
#   bash benchmarks/gpu_pack_official.sh
#   PY=3.11 bash benchmarks/gpu_pack_official.sh    # wheels for this machine's Python (a dry run here)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n' >> .git/info/exclude
PY=${PY:-3.12}
out=.whl/official
rm -rf "$out" && mkdir -p "$out/wheels"
python3 benchmarks/vs_official.py --setup-only > "$out/setup.log"
windows=$(sed -n 's/^windows: //p' "$out/setup.log")
src=$(sed -n '/^official: /{n;s/^ *//;p}' "$out/setup.log")
[ -f "$windows" ] && [ -f "$src/agents/rql.py" ] || { cat "$out/setup.log"; echo "no official source or windows"; exit 1; }
cp -r "$src" "$out/src" && cp "$windows" "$out/windows.npz"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$out/wheels" \
    distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 ml_collections==1.1.0 dm-tree==0.1.10 gast==0.7.0 decorator==5.3.1
du -sh "$out" "$out"/* && git ls-files -z | du -cb --files0-from=- | tail -n 1 | sed 's/total/bytes tracked/'
