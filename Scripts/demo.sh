#!/usr/bin/env bash
# The main job, start to finish on a fresh Debian 12 machine: set up (packages,
# QEMU, the test kernel), build vfioctl, boot the test guest (Intel VT-d, QEMU's
# edu DMA device) and walk through what an operator and a driver do:
#   doctor, list, bind, show, attach + map, a DMA round trip through fds handed
#   to another program, and unbind with the original driver restored.
#
#   Scripts/demo.sh [--iommu intel|amd|virtio]
set -euo pipefail
cd "$(dirname "$0")/.."
iommu=intel
[ "${1:-}" = "--iommu" ] && iommu=${2:?--iommu needs intel, amd or virtio}

Scripts/setup.sh
echo "== building vfioctl (release)"
# Each build's own exit status decides; its log is shown when it fails.
for product in vfioctl vfiokit-edu-dma; do
  log=$(swift build -c release --product "$product" 2>&1) || {
    printf '%s\n' "$log" | grep -vE '^\[[0-9]+/[0-9]+\]' >&2
    echo "demo.sh: building $product failed" >&2
    exit 1
  }
  printf '%s\n' "$log" | grep -E 'warning:|Build' | tail -n 3 || true
done

bin=$(swift build -c release --show-bin-path)
exec Scripts/vm.sh --iommu "$iommu" -- env BIN="$bin" sh -c '
  set -e
  v() { echo; echo "\$ vfioctl $*"; "$BIN/vfioctl" "$@"; }
  v doctor "$VFIOKIT_EDU" || true      # findings; non-zero when something needs fixing
  v list
  v bind "$VFIOKIT_EDU"
  v show "$VFIOKIT_EDU"
  v attach "$VFIOKIT_EDU" --ioas new --map 2M --map 64K@0x100000
  v attach "$VFIOKIT_EDU" --ioas new --prebound --exec -- "$BIN/vfiokit-edu-dma"
  v unbind "$VFIOKIT_EDU" --restore
  echo; echo "demo: done"
'
