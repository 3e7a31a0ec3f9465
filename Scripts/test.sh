#!/usr/bin/env bash
# Runs every VFIOKit test on a Debian 12 machine:
#   1. setup (apt packages, QEMU, the cached guest kernel),
#   2. debug and release builds (every import checked against the package graph),
#      the layer check (Scripts/check-layers.sh), and the DocC documentation
#      (Scripts/docs.sh: any DocC warning fails it),
#   3. unit tests on the host (fake kernel; guest suites skip there),
#   4. the ABI check of CVFIO against the kernel's own uapi headers, and its self-test,
#   4b. sanitizers (Scripts/sanitize.sh: host unit tests under ASan+LSan and TSan, guest
#      suites under ASan on Intel) and bounded libFuzzer runs (Scripts/fuzz.sh),
#   5. the guest suites, one boot per manifest (Tests/GuestManifest): every suite on
#      each IOMMU (Intel VT-d, AMD-Vi, virtio-iommu), and the NVMe driver's on each,
#      held to the manifest: nothing skipped, nothing missing, nothing unlisted, no
#      kernel warning,
#   6. a working tree under /tmp, which the guest's own tmpfs would hide.
# Prints one summary line per run and a total; exits non-zero if anything failed.
#
#   Scripts/test.sh                  everything
#   Scripts/test.sh --host-only      steps 1-4b (4b without the guest run)
#   VFIOKIT_FUZZ_SECONDS=N Scripts/test.sh       seconds per fuzz target (default 15)
#   VFIOKIT_GUEST_FILTER=REGEX Scripts/test.sh   limit the guest runs (a partial run:
#                                                listed tests that did not run are not reported)
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

# Each build's own exit status decides (a pipe into grep would hide it): a
# failed release build fails the run, and a failed debug build never lets a
# stale test binary run. --explicit-target-dependency-import-check=error: a
# target may import only what the package graph gives it (otherwise any module
# already built in .build would do).
build() {  # LABEL SWIFT-BUILD-ARGS...
  local label=$1 rc; shift
  say "build ($label)"
  swift build --explicit-target-dependency-import-check=error "$@" > "$out/build-$label.log" 2>&1
  rc=$?
  grep -vE '^\[[0-9]+/[0-9]+\]' "$out/build-$label.log" | tail -n 40
  if [ $rc -ne 0 ]; then
    echo "test.sh: the $label build failed (swift build $*: exit status $rc); log: $out/build-$label.log" >&2
    exit 1
  fi
}
build debug --build-tests
build release -c release

say "layers (package graph, libc calls outside the syscall layer, import checks)"
layers_rc=0
Scripts/check-layers.sh > "$out/layers.log" 2>&1 || layers_rc=1
grep -vE '^  client:' "$out/layers.log"
if [ $layers_rc -eq 0 ]; then echo "layers: 1 passed, 0 failed, 0 skipped"; else echo "layers: 0 passed, 1 failed, 0 skipped"; fi \
  > "$out/layers.summary"
cat "$out/layers.summary"
record layers $layers_rc

say "documentation (DocC catalog and symbols; warnings are errors)"
docs_rc=0
Scripts/docs.sh > "$out/docs.log" 2>&1 || docs_rc=1
grep -vE '^docs: ' "$out/docs.log" | tail -n 20
grep -E '^docs: ' "$out/docs.log" | tail -n 1 > "$out/docs.summary"; [ -s "$out/docs.summary" ] || rm -f "$out/docs.summary"
cat "$out/docs.summary"
record docs $docs_rc

tests=.build/debug/VFIOKitPackageTests.xctest

say "unit tests on the host"
"$tests" --testing-library swift-testing --event-stream-output-path "$out/host.jsonl" --event-stream-version 0 \
  > "$out/host.log" 2>&1
rc=$?
grep -E '✘|Test run with' "$out/host.log" | tail -n 30
python3 Scripts/test-summary.py host "$out/host.jsonl" > "$out/host.summary" || rc=1
cat "$out/host.summary"
record host $rc

say "the rig's own checks (test-summary.py reads kernel warnings of both formats)"
rig_rc=0
python3 Scripts/test-summary.py --self-test > "$out/rig.summary" 2> "$out/rig.log" || rig_rc=1
cat "$out/rig.log" "$out/rig.summary"
record rig $rig_rc

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

# Sanitizers and fuzzing (README, "Reliability"): the host unit tests under ASan (with
# LeakSanitizer) and TSan, a representative set of guest suites under ASan in an Intel
# guest (not with --host-only), and every libFuzzer target for a bounded time. Each run
# prints its own summary line (sanitize-*, fuzz).
say "sanitizers (Scripts/sanitize.sh)"
sanitize_args=(--out "$out/sanitize")
$host_only && sanitize_args+=(--host-only)
Scripts/sanitize.sh "${sanitize_args[@]}" 2>&1 | tee "$out/sanitize.log" | grep -E '^(==|sanitize)|✘|Test run with|\( *[0-9]+ s'
sanitize_rc=${PIPESTATUS[0]}
for s in "$out"/sanitize/sanitize-*.summary; do
  [ -e "$s" ] || { echo "sanitize: 0 passed, 1 failed, 0 skipped" > "$out/sanitize.summary"; record sanitize 1; break; }
  label=$(basename "$s" .summary); cp "$s" "$out/$label.summary"
  if grep -qE ' 0 failed' "$s"; then record "$label" 0; else record "$label" 1; fi
done
[ "$sanitize_rc" -eq 0 ] || status=1

say "fuzzing (Scripts/fuzz.sh, ${VFIOKIT_FUZZ_SECONDS:-15} s per target)"
fuzz_rc=0
Scripts/fuzz.sh --time "${VFIOKIT_FUZZ_SECONDS:-15}" --out "$out/fuzz" > "$out/fuzz.log" 2>&1 || fuzz_rc=1
grep -E '^fuzz|FAILED|ERROR|Fatal' "$out/fuzz.log"
cp "$out/fuzz/fuzz.summary" "$out/fuzz.summary" 2>/dev/null
record fuzz $fuzz_rc

# The guest's nvme starts from a known image in every run: an ext4 file system
# (the CLI tests mount it) and the pattern the NVMe driver's tests read back.
nvme_image="$out/nvme-test.img"
$host_only || Scripts/nvme-test-image.sh "$nvme_image" || { echo "Scripts/nvme-test-image.sh failed" >&2; exit 1; }

# One guest boot per manifest (Tests/GuestManifest/*.txt): it names the IOMMU,
# the filter, the suites that do not apply there (with the reason) and any
# vm.sh options. The run must execute exactly the tests the manifest lists: a
# listed test that is skipped or missing, or a test that ran and is not listed,
# fails it.
guest() {  # LABEL MANIFEST
  local label=$1 manifest=$2 iommu filter skip rc partial=() vmargs=()
  iommu=$(python3 Scripts/test-summary.py --directive "$manifest" iommu)
  filter=$(python3 Scripts/test-summary.py --directive "$manifest" filter)
  skip=$(python3 Scripts/test-summary.py --directive "$manifest" skip)
  read -r -a vmargs <<< "$(python3 Scripts/test-summary.py --directive "$manifest" vm)"
  if [ -n "${VFIOKIT_GUEST_FILTER:-}" ]; then filter=$VFIOKIT_GUEST_FILTER; partial=(--partial); fi
  say "guest suites on $iommu ($manifest)"
  mkdir -p "$out/$label"
  # Scripts/guest/watchdog dumps the test threads' kernel stacks if the event
  # stream stalls for 7 minutes (the longest test takes about 3).
  VFIOKIT_RESULTS="$out/$label" Scripts/vm.sh --iommu "$iommu" --timeout 900 --nvme-image "$nvme_image" \
    ${vmargs[@]+"${vmargs[@]}"} -- sh -c \
    'e="$VFIOKIT_RESULTS_DIR/events.jsonl"; exec Scripts/guest/watchdog "$e" 420 "$0" --testing-library swift-testing --filter "$1" --skip "$2" --event-stream-output-path "$e" --event-stream-version 0' \
    "$tests" "$filter" "${skip:-^\$}" > "$out/$label.log" 2>&1
  rc=$?
  # The failures, each issue with its comment lines (an fd-leak check names the fds there).
  awk '/✘|Test run with/ {print; keep = /recorded an issue/; next} keep && /^↳/ {print; next} {keep = 0}' \
    "$out/$label.log" | tail -n 40
  [ $rc -eq 0 ] || tail -n 40 "$out/$label.log"
  # Every boot runs single-threaded TCG: with a thread per vCPU, QEMU 10.0 can lose a
  # halted vCPU's timer wakeup and the guest stalls for good (vm.sh --help, --tcg-thread).
  if ! grep -q 'tcg\\,thread=single' "$out/$label/latest/qemu-command"; then
    echo "$label: the guest ran without --tcg-thread single: $(cat "$out/$label/latest/qemu-command")" >&2
    rc=1
  fi
  python3 Scripts/test-summary.py "$label" "$out/$label/latest/results/events.jsonl" --manifest "$manifest" \
    --console "$out/$label/latest/console.log" \
    ${partial[@]+"${partial[@]}"} > "$out/$label.summary" || rc=1
  cat "$out/$label.summary"
  record "$label" $rc
}

# A new user's clone in /tmp: the guest mounts its own tmpfs there, so vm.sh must
# export the tree into the guest. A small tree (the scripts, a file, a built
# binary) under /tmp, vm.sh run from inside it: the guest must read the file and
# run the binary at the same paths.
tmp_tree() {
  local t rc=0 log="$out/tmp-tree.log"
  say "a working tree under /tmp (hidden in the guest by its tmpfs, exported by vm.sh)"
  t=$(mktemp -d /tmp/vfiokit-tree.XXXXXX)
  mkdir -p "$t/.build/release"
  cp -R Scripts "$t/Scripts"
  ln .build/release/vfioctl "$t/.build/release/vfioctl" 2>/dev/null || cp .build/release/vfioctl "$t/.build/release/vfioctl"
  echo "a file in $t" > "$t/marker"
  (cd "$t" && Scripts/vm.sh --timeout 300 -- sh -c \
    'cat marker && .build/release/vfioctl list --json | grep -q "\"address\"" && echo "vfioctl ran in $(pwd)"') > "$log" 2>&1 || rc=1
  cat "$log"
  grep -qx "a file in $t" "$log" && grep -qx "vfioctl ran in $t" "$log" || rc=1
  rm -rf "$t"
  if [ $rc -eq 0 ]; then echo "tmp-tree: 1 passed, 0 failed, 0 skipped"; else echo "tmp-tree: 0 passed, 1 failed, 0 skipped"; fi > "$out/tmp-tree.summary"
  cat "$out/tmp-tree.summary"
  record tmp-tree $rc
}

if ! $host_only; then
  for i in intel amd virtio; do
    guest "guest-$i" "Tests/GuestManifest/$i.txt"
    # The NVMe driver (Examples/NVMeDriver) in a boot of its own, with
    # single-threaded TCG (the manifest's @vm): see its manifest for why.
    guest "guest-$i-nvme" "Tests/GuestManifest/$i-nvme.txt"
    # SR-IOV VF tokens: the SR-IOV PF of vm.sh --sriov-pf (the manifest's @vm). Not on
    # amd: its QEMU 7.2's nvme VFs never come back from an FLR (amd.txt says more).
    [ ! -f "Tests/GuestManifest/$i-sriov.txt" ] || guest "guest-$i-sriov" "Tests/GuestManifest/$i-sriov.txt"
    # 1 GiB hugetlb pages read back from the VT-d page tables: vm.sh --hugepage-1g (the manifest's
    # @vm). Intel only: the page tables are read through the Intel IOMMU driver's debugfs.
    [ ! -f "Tests/GuestManifest/$i-1gib.txt" ] || guest "guest-$i-1gib" "Tests/GuestManifest/$i-1gib.txt"
  done
  tmp_tree
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
