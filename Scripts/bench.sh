#!/usr/bin/env bash
# Builds vfiokit-bench in release mode and runs it:
#  1. on the host (no guest): the IOVA allocator's allocate + free pairs per
#     second, allocations per pair, and instructions per pair (callgrind);
#  2. in the test guest: VFIOKit's device open to attached, map/unmap (IOAS and
#     type1), config read, MMIO and interrupt-wait paths against the same work
#     in plain C, with the user-space instructions per operation of both sides
#     beside the times (counted under valgrind's callgrind in the same guest
#     boot, in a run of its own before the timed one);
#  3. in a second guest boot: the NVMe driver (Examples/NVMeDriver) against
#     the kernel's nvme driver (fio) on a null-backed controller, with a poll
#     queue for the kernel's polled I/O.
#
#   Scripts/bench.sh [--iommu intel|amd|virtio] [--json] [--no-nvme | --nvme-only | --host] [--seconds N] [--rounds N]
#
# --host runs step 1 only (no guest).
#
# The hot-path boot runs QEMU with one TCG thread (--tcg-thread single): the
# open-to-attached rows open and close the edu devices hundreds of times, and
# QEMU 10.0's multi-threaded TCG can trip an assertion when BARs are remapped
# while the other vCPU runs (see Scripts/vm.sh --help).
# NVMe: every case (4 KiB and 512 B random reads, QD1 and QD32, interrupts and
# polling) runs --seconds (default 5) per side per round, --rounds (default 3)
# rounds; the table shows each side's median round.
# Without valgrind installed, the instruction columns show "-".
set -euo pipefail
cd "$(dirname "$0")/.."
iommu=intel
args=()
nvme=1
hot=1
guest=1
while [ $# -gt 0 ]; do
  case "$1" in
    --iommu) iommu=$2; shift 2 ;;
    --no-nvme) nvme=0; shift ;;
    --nvme-only) hot=0; shift ;;
    --host) guest=0; nvme=0; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
# The build's own exit status decides (a failed build must not bench a stale binary).
build_log=$(swift build -c release --product vfiokit-bench 2>&1) || {
  printf '%s\n' "$build_log" | grep -vE '^\[[0-9]+/[0-9]+\]' >&2
  echo "bench.sh: the release build of vfiokit-bench failed" >&2
  exit 1
}
printf '%s\n' "$build_log" | grep -E 'warning:' >&2 || [ $? -eq 1 ]
# valgrind 3.19 cannot read the DWARF 5 debug info swiftc writes ("debuginfo
# reader: Possibly corrupted debuginfo file"): it counts a copy without it
# (same code; the symbol table stays, so callgrind still names functions).
strip --strip-debug -o .build/release/vfiokit-bench-nodebug .build/release/vfiokit-bench
have_valgrind=0
command -v valgrind >/dev/null && have_valgrind=1 || echo "bench.sh: valgrind not found: no instruction counts" >&2

if [ $hot = 1 ]; then
  # 1. The host rows.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  counts=()
  if [ $have_valgrind = 1 ]; then
    if VFIOKIT_CALLGRIND_OUT="$tmp/cg" valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" \
         .build/release/vfiokit-bench-nodebug --host --count-out "$tmp/host.tsv" >"$tmp/log" 2>&1; then
      counts=(--counts "$tmp/host.tsv")
    else
      echo "bench.sh: counting the host rows under callgrind failed:" >&2; grep -v '^==' "$tmp/log" | tail -20 >&2
    fi
  fi
  .build/release/vfiokit-bench --host "${counts[@]}"
  [ $guest = 1 ] || exit 0
  echo

  # 2. The hot paths in the guest: a callgrind run for the counts, then the timed run.
  # shellcheck disable=SC2016 # expanded in the guest
  guest='
    d=$VFIOKIT_SCRATCH/callgrind; mkdir -p "$d"; counts=()
    if command -v valgrind >/dev/null; then
      if VFIOKIT_CALLGRIND_OUT=$d/cg valgrind --tool=callgrind --callgrind-out-file=$d/cg \
           .build/release/vfiokit-bench-nodebug --count-out "$d/counts.tsv" >"$d/log" 2>&1; then
        counts=(--counts "$d/counts.tsv")
      else
        echo "bench.sh: counting instructions under callgrind failed in the guest:" >&2
        grep -v "^==" "$d/log" | tail -20 >&2
      fi
    fi
    exec .build/release/vfiokit-bench --no-nvme "${counts[@]}" "$@"'
  Scripts/vm.sh --iommu "$iommu" --tcg-thread single --timeout 1800 -- bash -c "$guest" bash "${args[@]}"
fi

if [ $nvme = 1 ]; then
  # 3. The NVMe rows.
  command -v fio >/dev/null || { echo "bench.sh: fio not found (Scripts/setup.sh installs it)" >&2; exit 1; }
  [ $hot = 1 ] && echo
  Scripts/vm.sh --iommu "$iommu" --timeout 2400 --nvme-null --append nvme.poll_queues=1 -- .build/release/vfiokit-bench --nvme-only "${args[@]}"
fi
