#!/usr/bin/env bash
# Builds vfiokit-bench in release mode and runs it in the test guest: VFIOKit's
# map/unmap, MMIO and interrupt-wait paths against the same work in plain C,
# then the NVMe driver (Examples/NVMeDriver) against the kernel's nvme driver
# (fio) on a null-backed controller, with a poll queue for the kernel's polled I/O.
#
#   Scripts/bench.sh [--iommu intel|amd|virtio] [--json] [--no-nvme | --nvme-only] [--seconds N] [--rounds N]
#
# NVMe: every case (4 KiB and 512 B random reads, QD1 and QD32, interrupts and
# polling) runs --seconds (default 5) per side per round, --rounds (default 3)
# rounds; the table shows each side's median round.
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
command -v fio >/dev/null || { echo "bench.sh: fio not found (Scripts/setup.sh installs it)" >&2; exit 1; }
exec Scripts/vm.sh --iommu "$iommu" --timeout 2400 --nvme-null --append nvme.poll_queues=1 -- .build/release/vfiokit-bench "${args[@]}"
