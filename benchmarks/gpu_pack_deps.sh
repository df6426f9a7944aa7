#!/usr/bin/env bash
# Run HERE (a machine with a package index), before a GPU lease whose image lacks the simulators.
# The lent GPU machines (Python 3.12, torch, no network) have no gymnasium, mujoco, ogbench,
# dm_control or minari; this packs them, for Python 3.12 on x86-64, into one archive of about 17 MB
# (dm_control's suite, locomotion and test assets, labmaze, mujoco's studio, docs and Filament
# renderer, and every *_test.py are left out: rql never imports them, and the tracked tree plus this
# archive must stay under the 64 MiB a lease carries: true at 43 MB of tree, no longer at today's 55 MB
# (the bundled agents), so benchmarks/gpu_speed.sh needs no simulator), and fetches the GL libraries
# headless rendering needs there. Both folders are git-ignored.
#   bash benchmarks/gpu_pack_deps.sh        # writes .whl/site.tar.xz and .gl/*.deb
# On the GPU machine, carry .whl and .gl and run benchmarks/gpu_e2e.sh (it unpacks both).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gl/\n' >> .git/info/exclude
site=$(mktemp -d)
python3 -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any --target "$site" \
    gymnasium==1.4.0 farama-notifications mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 \
    websockets glfw==2.11.0 PyOpenGL==3.1.10 ogbench==1.2.2 dm_control==1.0.50 dm-env dm-tree \
    minari==0.5.4
rm -rf "$site"/dm_control/suite "$site"/dm_control/locomotion "$site"/dm_control/mujoco/testing \
    "$site"/labmaze "$site"/labmaze-* "$site"/mujoco/studio "$site"/mujoco/doc "$site"/mujoco/_render_filament* "$site"/bin
find "$site" -name '*_test.py' -delete
mkdir -p .whl && tar -C "$site" -cJf .whl/site.tar.xz . && rm -rf "$site"
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
ls -la .whl/site.tar.xz .gl
