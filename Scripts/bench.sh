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
#     queue for the kernel's polled I/O;
#  4. in a third guest boot (more memory, 1 GiB of 2 MiB hugepages): map and
#     unmap of 1 GiB in each of the five DMA modes, as 4 KiB anonymous pages,
#     2 MiB hugetlb pages and a memfd (IOMMU_IOAS_MAP_FILE in native iommufd),
#     and `vfioctl list` end to end against `lspci` (median of --list-runs).
#
#   Scripts/bench.sh [--iommu intel|amd|virtio] [--json] [--no-nvme | --nvme-only | --host | --modes-only]
#                    [--no-modes] [--seconds N] [--rounds N] [--list-runs N]
#
# --host runs step 1 only (no guest); --modes-only step 4 only.
#
# The hot-path boot runs QEMU with one TCG thread (--tcg-thread single): the
# open-to-attached rows open and close the edu devices hundreds of times, and
# QEMU 10.0's multi-threaded TCG can trip an assertion when BARs are remapped
# while the other vCPU runs (see Scripts/vm.sh --help). The NVMe and DMA-mode boots
# ask for multi-threaded TCG (--tcg-thread multi), the conditions the README's
# tables of them were measured in.
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
modes=1
list_runs=21
while [ $# -gt 0 ]; do
  case "$1" in
    --iommu) iommu=$2; shift 2 ;;
    --no-nvme) nvme=0; shift ;;
    --nvme-only) hot=0; shift ;;
    --host) guest=0; nvme=0; modes=0; shift ;;
    --modes-only) hot=0; nvme=0; shift ;;
    --no-modes) modes=0; shift ;;
    --list-runs) list_runs=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
# The build's own exit status decides (a failed build must not bench a stale binary).
build_log=$( (swift build -c release --product vfiokit-bench && swift build -c release --product vfioctl) 2>&1) || {
  printf '%s\n' "$build_log" | grep -vE '^\[[0-9]+/[0-9]+\]' >&2
  echo "bench.sh: the release build of vfiokit-bench or vfioctl failed" >&2
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
  Scripts/vm.sh --iommu "$iommu" --tcg-thread multi --timeout 2400 --nvme-null --append nvme.poll_queues=1 -- .build/release/vfiokit-bench --nvme-only "${args[@]}"
fi

if [ $modes = 1 ]; then
  # 4. DMA modes and `vfioctl list`. The guest gets 4 GiB: 1 GiB of hugepages
  # plus a 1 GiB buffer (one backing at a time) and the rest.
  command -v lspci >/dev/null || { echo "bench.sh: lspci not found (Scripts/setup.sh installs pciutils)" >&2; exit 1; }
  [ $hot = 1 ] || [ $nvme = 1 ] && echo
  # shellcheck disable=SC2016 # expanded in the guest
  guest='
    runs=$1; shift
    # vm.sh boots with hugepages=16 (a second hugepages= on the command line is
    # ignored by the kernel): raise the pool now, while memory is unfragmented.
    echo 512 > /proc/sys/vm/nr_hugepages
    got=$(cat /proc/sys/vm/nr_hugepages)
    [ "$got" -ge 512 ] || echo "bench.sh: only $got of 512 hugepages: the hugetlb column will fail" >&2
    .build/release/vfiokit-bench --dma-modes "$@" || exit
    echo
    median() { sort -n | awk "{a[NR]=\$1} END {print a[int((NR+1)/2)]}"; }
    time_runs() {
      for _ in $(seq "$runs"); do
        s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "bench.sh: $* failed" >&2; exit 1; }; e=$(date +%s%N)
        echo $(( (e - s) / 1000 ))
      done | median
    }
    list=$(time_runs .build/release/vfioctl list)
    lspci_us=$(time_runs lspci)
    lspci_nn=$(time_runs lspci -nnk)
    start=$(time_runs .build/release/vfioctl --version)
    echo "vfioctl list against lspci (same guest, $runs runs each, median, process start to exit, output to /dev/null)"
    printf "%-40s %12s %8s\n" command "us per run" "ratio"
    printf "%-40s %12d %8s\n" "lspci" "$lspci_us" "1.00"
    printf "%-40s %12d %8.2f\n" "lspci -nnk (ids, drivers)" "$lspci_nn" "$(echo "$lspci_nn / $lspci_us" | bc -l)"
    printf "%-40s %12d %8.2f\n" "vfioctl list (release)" "$list" "$(echo "$list / $lspci_us" | bc -l)"
    printf "%-40s %12d %8.2f\n" "vfioctl --version (start-up only)" "$start" "$(echo "$start / $lspci_us" | bc -l)"'
  Scripts/vm.sh --iommu "$iommu" --tcg-thread multi --memory 4G --timeout 2400 -- \
    bash -c "$guest" bash "$list_runs" "${args[@]}"
fi
