#!/usr/bin/env bash
# Builds vfiokit-bench in release mode and runs it in the test guest: VFIOKit's
# map/unmap, MMIO and interrupt-wait paths against the same work in plain C.
#
#   Scripts/bench.sh [--iommu intel|amd|virtio] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
iommu=intel
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --iommu) iommu=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
swift build -c release --product vfiokit-bench 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]|^Building|^Build complete|^Compiling|^Write' || true
exec Scripts/vm.sh --iommu "$iommu" -- .build/release/vfiokit-bench "${args[@]}"
