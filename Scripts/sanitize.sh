#!/usr/bin/env bash
# Runs VFIOKit's tests under AddressSanitizer (with LeakSanitizer) and ThreadSanitizer:
#   1. swift build --build-tests --sanitize=address into .build/asan, and
#      --sanitize=thread into .build/tsan (each build's exit status decides),
#   2. the host unit tests (fake kernel) under each: every test of the bundle, guest
#      suites skipping as they do in the plain host run,
#   3. unless --host-only: an Intel VT-d guest boot for each, running a representative
#      set of guest suites (real iommufd, VFIO, DMA and interrupts, the many-thread
#      IOAS tests) from the ASan and the TSan build; the guest's root is the host's /,
#      so it finds the toolchain's sanitizer runtime.
# A run fails when its exit status is not 0, when a test fails, when no test ran, or
# when its output holds any sanitizer report (even one that did not change the status).
# Prints one summary line per run (`sanitize-LABEL: N passed, N failed, N skipped`),
# writes each to OUT/sanitize-LABEL.summary, and exits non-zero if any run failed.
#
#   Scripts/sanitize.sh [--host-only] [--out DIR]      (DIR: default .build/sanitize)
#   VFIOKIT_SANITIZE_GUEST_FILTER=REGEX   the guest suites to run (default below)
#
# Leaks: LeakSanitizer checks every host test except the ones that leak on purpose:
# when an unmap fails or comes up short, DMAMapping.keepForever keeps the buffer alive
# for good (its pages may still be mapped for a device). Those tests run in a run of
# their own with leak detection off (still under ASan for memory errors). The guest
# run checks memory errors only (the guest suites make unmaps fail on purpose too).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
host_only=false
out="$repo/.build/sanitize"
while [ $# -gt 0 ]; do
  case $1 in
    --host-only) host_only=true ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "sanitize.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
rm -f "$out"/sanitize-*.summary
status=0
start=$SECONDS

# The tests that leak a DMABuffer on purpose (see above), and one that lowers
# RLIMIT_NOFILE in an exit-test child until LeakSanitizer itself cannot open
# /proc/self/maps at the child's exit (it then exits 1: a harness artifact).
deliberate='UnmapFailureTests|FailEverySyscallTests|aFailedCopyIsAnError'
# Timing bounds that do not hold in sanitizer builds (they run in the plain host run):
# the fault-queue and vEVENTQ waits must end within 50 ms of a cancel, a blocking wait
# within 50 ms of a close; under TSan they took 250 and 165 ms, under ASan on a loaded
# machine 126 ms (the waits do end: a lost wake would hang).
timing='faultQueueNextWaitsOnReadinessAndCancelsPromptly|vEventQueueNextWaitsOnReadinessAndCancelsPromptly|closeEndsABlockingWait'
# The fail-every-syscall sweep also requires that some scenario made a nanosleep (a wait
# that found its condition at once makes none); under TSan none did. It runs under ASan.
tsan_only='FailEverySyscallTests'
# The allocation counts (HotPathAllocationTests, and the allocation checks of
# InterruptExecutorTests, InterruptScopeTests and RevocationRecordTests) interpose malloc,
# which a sanitizer runtime owns: they count nothing in these builds (they would fail)
# and run in the plain host run.
not_sanitized='HotPathAllocationTests|InterruptExecutorTests/noAllocationPerInterrupt|InterruptScopeTests/executorScopeNoAllocationPerInterrupt|RevocationRecordTests/recordingAClosedDeviceAllocatesNothing'
guest_filter=${VFIOKIT_SANITIZE_GUEST_FILTER:-'VFIOKitGuestTests\.(DMAModesTests|IOMMUFDDeviceTests|IOMMUFDMockTests|DeviceGuestTests|EndToEndTests)'}

# Reports of any sanitizer in the binary's own output and in exit-test children's.
reports='ERROR: AddressSanitizer|ERROR: LeakSanitizer|WARNING: ThreadSanitizer|ThreadSanitizer: reported|runtime error:|SUMMARY: (Address|Thread|Leak|UndefinedBehavior)Sanitizer'

export SWIFT_BACKTRACE=enable=no   # the sanitizers print the stacks; the Swift backtracer would wait on a crash

build() {  # NAME SANITIZER
  local rc t=$SECONDS
  echo "== swift build --build-tests --sanitize=$2 --build-path .build/$1"
  swift build --build-tests --sanitize="$2" --build-path ".build/$1" > "$out/build-$1.log" 2>&1
  rc=$?
  # The sanitizer runtimes' objects make ld.gold warn "Cannot export local symbol": not ours.
  grep -vE '^\[[0-9]+/[0-9]+\]|ld.gold: warning: Cannot export local symbol' "$out/build-$1.log" | tail -n 20
  echo "   ($((SECONDS - t)) s)"
  if [ $rc -ne 0 ]; then
    echo "sanitize.sh: the $2 build failed (exit status $rc); log: $out/build-$1.log" >&2
    return 1
  fi
}

# Runs one test run and writes OUT/sanitize-LABEL.summary.
check() {  # LABEL LOG EVENTS RC [test-summary.py options...]
  local label=$1 log=$2 events=$3 rc=$4 found line
  shift 4
  line=$(python3 Scripts/test-summary.py "sanitize-$label" "$events" "$@" 2>&1) || rc=1
  found=$(grep -cE "$reports" "$log")
  if [ "$found" -ne 0 ]; then
    echo "sanitize.sh: $label: $found sanitizer report lines in $log:" >&2
    grep -E "$reports" "$log" | head -n 20 >&2
    rc=1
  fi
  [ $rc -eq 0 ] || { echo "sanitize.sh: $label failed (exit status, test failures or sanitizer reports); log: $log" >&2; status=1; }
  # A failed run must not read as passed even if every test did.
  if [ $rc -ne 0 ] && echo "$line" | grep -qE ' 0 failed'; then line=$(echo "$line" | sed -E 's/ 0 failed/ 1 failed/'); fi
  echo "$line" | tee "$out/sanitize-$label.summary"
}

# One Intel guest boot running the guest suites of $guest_filter from BUILD's test bundle.
guest_run() {  # LABEL BUILD ENV-ASSIGNMENT PARALLEL(--parallel|--no-parallel) [vm.sh options...]
  local label=$1 build=$2 envopt=$3 parallel=$4 log="$out/$1.log" rc t=$SECONDS; shift 4
  echo "== $label ($guest_filter)"
  mkdir -p "$out/$label"
  VFIOKIT_RESULTS="$out/$label" Scripts/vm.sh --iommu intel --timeout 1500 "$@" -- env \
    "$envopt" SWIFT_BACKTRACE=enable=no sh -c \
    'exec "$0" --testing-library swift-testing "$2" --filter "$1" --event-stream-output-path "$VFIOKIT_RESULTS_DIR/events.jsonl" --event-stream-version 0' \
    ".build/$build/debug/VFIOKitPackageTests.xctest" "$guest_filter" "$parallel" > "$log" 2>&1
  rc=$?
  grep -E '✘|Test run with' "$log" | tail -n 15
  echo "   ($((SECONDS - t)) s, exit status $rc)"
  [ $rc -eq 0 ] || tail -n 30 "$log"
  check "$label" "$log" "$out/$label/latest/results/events.jsonl" $rc --console "$out/$label/latest/console.log"
}

host_run() {  # LABEL BUILD ENV-ASSIGNMENT... [swift-testing args...]
  local label=$1 build=$2 rc t=$SECONDS opts=(); shift 2
  while [ $# -gt 0 ] && [[ $1 == *=* ]] && [[ $1 != -* ]]; do opts+=("$1"); shift; done
  local log="$out/$label.log" events="$out/$label.jsonl"
  rm -f "$events"
  echo "== $label"
  env "${opts[@]}" ".build/$build/debug/VFIOKitPackageTests.xctest" --testing-library swift-testing \
    --event-stream-output-path "$events" --event-stream-version 0 "$@" > "$log" 2>&1
  rc=$?
  grep -E '✘|Test run with' "$log" | tail -n 15
  echo "   ($((SECONDS - t)) s, exit status $rc)"
  check "$label" "$log" "$events" $rc
}

supp="$repo/Scripts/sanitizers"
asan_common="abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"

if build asan address; then
  # One test at a time here too: IOMMUModel (test scaffolding) calls a fault queue or
  # vEVENTQ busy while fcntl(F_GETFD) finds its eventfd's number open, and a test running
  # beside it may have reused that number (seen twice: IOMMU_DESTROY ... EBUSY in
  # ObjectLifetimeTests.everyOperationOfADestroyedOwnerThrowsWithoutAnIoctl).
  host_run asan-host asan "ASAN_OPTIONS=$asan_common:detect_leaks=1" "LSAN_OPTIONS=suppressions=$supp/lsan.supp:print_suppressions=0" \
    --no-parallel --skip "$deliberate|$timing|$not_sanitized"
  host_run asan-host-deliberate-leaks asan "ASAN_OPTIONS=$asan_common:detect_leaks=0" --filter "$deliberate"
  $host_only || guest_run asan-guest-intel asan "ASAN_OPTIONS=$asan_common:detect_leaks=0" --parallel
else
  echo "sanitize-asan-build: 0 passed, 1 failed, 0 skipped" | tee "$out/sanitize-asan-build.summary"; status=1
fi

if build tsan thread; then
  # One test at a time (--no-parallel; see also above): run side by side under TSan, tests that wait for a
  # task or thread of the 2-core cooperative pool timed out (an interrupt count not seen in
  # 10 s, a wait thread not started in 5 s). Each test's own threads and tasks still race.
  host_run tsan-host tsan "TSAN_OPTIONS=halt_on_error=0:exitcode=66:suppressions=$supp/tsan.supp" \
    --no-parallel --skip "$timing|$tsan_only|$not_sanitized"
  # In the guest: -cpu max, as the TSan runtime uses SSE4 (QEMU's default CPU model has
  # none: SIGILL in VectorClock::Acquire); the guest kernel refuses MADV_DONTDUMP on the
  # shadow, which TSan asks for by default.
  $host_only || guest_run tsan-guest-intel tsan \
    "TSAN_OPTIONS=halt_on_error=0:exitcode=66:use_madv_dontdump=0:suppressions=$supp/tsan.supp" --no-parallel \
    --qemu-arg=-cpu --qemu-arg=max
else
  echo "sanitize-tsan-build: 0 passed, 1 failed, 0 skipped" | tee "$out/sanitize-tsan-build.summary"; status=1
fi

echo "sanitize.sh: $((SECONDS - start)) s in all"
exit $status
