# Sourced by the GPU scripts: `require_cuda NAME` prints torch's CUDA device, or exits 2 with one line
# when torch would see none. Without a device node (/dev/nvidiactl, or /dev/dxg under WSL) that is known
# before torch's import, saving the three seconds of CPU that CI's run of each script would spend on it.
require_cuda() {
  if [ ! -e /dev/nvidiactl ] && [ ! -e /dev/dxg ]; then
    echo "$1: no NVIDIA device node (/dev/nvidiactl): torch sees no CUDA device here." >&2
    exit 2
  fi
  python3 -c "import torch, sys; torch.cuda.is_available() or sys.exit('$1: torch ' + torch.__version__ + ' sees no CUDA device here.'); print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}')" || exit 2
}
