#!/usr/bin/env bash
# Runs every VFIOKit test on a Debian 12 machine:
#   1. setup (apt packages, QEMU, the cached guest kernel),
#   2. debug and release builds (every import checked against the package graph),
#      and the layer check (Scripts/check-layers.sh),
#   3. unit tests on the host (fake kernel; guest suites skip there),
#   4. the ABI check of CVFIO against the kernel's own uapi headers, and its self-test,
#   5. the guest suites: all of them under Intel VT-d, the DMA suites under AMD-Vi
#      and virtio-iommu, the NVMe driver's on all three.
# Prints one summary line per run and a total; exits non-zero if anything failed.
#
#   Scripts/test.sh                  everything
#   Scripts/test.sh --host-only      steps 1-4
#   VFIOKIT_GUEST_FILTER=REGEX Scripts/test.sh   limit the Intel guest run
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
host_only=false
[ "${1:-}" = "--host-only" ] && host_only=true

say() { printf '\n== %s\n' "$*"; }
out="$repo/.build/test-results"
rm -rf "$out"; mkdir -p "$out"
summaries=()
status=0
record() {  # LABEL RC: remember the summary line printed in $out/LABEL.summary
  local line
  line=$(cat "$out/$1.summary" 2>/dev/null || echo "$1: 0 passed, 1 failed, 0 skipped")
  summaries+=("$line")
  [ "$2" -eq 0 ] || status=1
}

say "setup"
Scripts/setup.sh || { echo "setup failed" >&2; exit 1; }

# --explicit-target-dependency-import-check=error: a target may import only what the
# package graph gives it (otherwise any module already built in .build would do).
say "build (debug, with tests)"
swift build --build-tests --explicit-target-dependency-import-check=error 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "debug build failed" >&2; exit 1; }
say "build (release)"
swift build -c release --explicit-target-dependency-import-check=error 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "release build failed" >&2; exit 1; }

say "layers (package graph, libc calls outside the syscall layer, import checks)"
layers_rc=0
Scripts/check-layers.sh > "$out/layers.log" 2>&1 || layers_rc=1
grep -vE '^  client:' "$out/layers.log"
if [ $layers_rc -eq 0 ]; then echo "layers: 1 passed, 0 failed, 0 skipped"; else echo "layers: 0 passed, 1 failed, 0 skipped"; fi \
  > "$out/layers.summary"
cat "$out/layers.summary"
record layers $layers_rc

tests=.build/debug/VFIOKitPackageTests.xctest

say "unit tests on the host"
"$tests" --testing-library swift-testing --event-stream-output-path "$out/host.jsonl" --event-stream-version 0 \
  > "$out/host.log" 2>&1
rc=$?
grep -E '✘|Test run with' "$out/host.log" | tail -n 30
python3 Scripts/test-summary.py host "$out/host.jsonl" > "$out/host.summary" || rc=1
cat "$out/host.summary"
record host $rc

say "ABI check against the kernel's uapi headers"
abi_rc=0
Scripts/abi-check.sh > "$out/abi.log" 2>&1 || abi_rc=1
tail -n 5 "$out/abi.log"
Scripts/abi-check.sh --self-test > "$out/abi-self.log" 2>&1 || abi_rc=1
tail -n 5 "$out/abi-self.log"
p=0; f=0
if grep -q . "$out/abi.log" && [ $abi_rc -eq 0 ]; then p=2; else f=1; fi
echo "abi: $p passed, $f failed, 0 skipped" | tee "$out/abi.summary"
record abi $abi_rc

# The guest's nvme starts from a known image in every run: an ext4 file system
# (the CLI tests mount it) and the pattern the NVMe driver's tests read back.
nvme_image="$out/nvme-test.img"
$host_only || Scripts/nvme-test-image.sh "$nvme_image" || { echo "Scripts/nvme-test-image.sh failed" >&2; exit 1; }

guest() {  # LABEL IOMMU FILTER [SKIP [VM.SH OPTIONS...]]
  local label=$1 iommu=$2 filter=$3 skip=${4:-^$} rc
  shift 3; [ $# -eq 0 ] || shift
  say "guest suites on $iommu (filter: $filter)"
  mkdir -p "$out/$label"
  VFIOKIT_RESULTS="$out/$label" Scripts/vm.sh --iommu "$iommu" --timeout 1200 --nvme-image "$nvme_image" "$@" -- sh -c \
    'exec "$0" --testing-library swift-testing --filter "$1" --skip "$2" --event-stream-output-path "$VFIOKIT_RESULTS_DIR/events.jsonl" --event-stream-version 0' \
    "$tests" "$filter" "$skip" > "$out/$label.log" 2>&1
  rc=$?
  grep -E '✘|Test run with' "$out/$label.log" | tail -n 30
  [ $rc -eq 0 ] || tail -n 40 "$out/$label.log"
  python3 Scripts/test-summary.py "$label" "$out/$label/latest/results/events.jsonl" > "$out/$label.summary" || rc=1
  cat "$out/$label.summary"
  record "$label" $rc
}

if ! $host_only; then
  # The fail-nth sweeps get a guest of their own: they change the kernel's
  # fault-injection settings, and a fresh boot keeps the other suites' state out.
  guest "guest-intel" intel "${VFIOKIT_GUEST_FILTER:-VFIOKitGuestTests}" "FailNth"
  guest "guest-intel-failnth" intel "VFIOKitGuestTests\\.FailNth"
  guest "guest-amd" amd "VFIOKitGuestTests\\.(EndToEnd|DMAModes)"
  guest "guest-virtio" virtio "VFIOKitGuestTests\\.(EndToEnd|DMAModes)"
  # The NVMe driver (Examples/NVMeDriver) on each IOMMU, with single-threaded
  # TCG: its tests open the nvme dozens of times, each open and close an FLR
  # that remaps the BAR, and QEMU 10.0's multi-threaded TCG then sometimes trips
  # (iotlb_to_section assertion) or hangs (vm.sh --help, --tcg-thread).
  for i in intel amd virtio; do
    guest "guest-$i-nvme" "$i" "NVMeDriverTests" "^$" --tcg-thread single
  done
fi

say "summary"
tp=0; tf=0; ts=0
for s in "${summaries[@]}"; do
  echo "  $s"
  read -r p f k < <(echo "$s" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1 \2 \3/')
  tp=$((tp + p)); tf=$((tf + f)); ts=$((ts + k))
done
echo "total: $tp passed, $tf failed, $ts skipped"
exit $status
