#!/usr/bin/env bash
# Fuzzes VFIOKit's parsers of outside input with libFuzzer (Fuzz/README.md):
#   1. builds vfiokit-fuzz (VFIOKIT_FUZZ=1, --sanitize=fuzzer -Xswiftc -sanitize=address,fuzzer) into .build/fuzz,
#   2. runs each target for a bounded time from its seed corpus (Fuzz/Corpus/TARGET, kept in
#      the repository) plus what earlier runs found (.build/fuzz/corpus/TARGET, not kept),
#      with ASan and LeakSanitizer on.
# A target fails when libFuzzer exits non-zero or leaves a crash, leak, timeout or OOM
# input (OUT/TARGET/crash-*, leak-*, timeout-*, oom-*). Every such input becomes a
# regression test in Tests/VFIOKitTests (FuzzRegressionTests) with its fix.
# Prints one line per target and `fuzz: N passed, N failed, 0 skipped` (OUT/fuzz.summary).
#
#   Scripts/fuzz.sh [--time SECS] [--out DIR] [TARGET...]   (default: 20 s each, all targets)
#   Scripts/fuzz.sh --replay FILE... --target TARGET         run inputs once (a crash to reproduce)
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
seconds=20
out="$repo/.build/fuzz/results"
targets=()
replay=()
replay_target=
while [ $# -gt 0 ]; do
  case $1 in
    --time) seconds=$2; shift ;;
    --out) out=$2; shift ;;
    --replay) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do replay+=("$1"); shift; done; continue ;;
    --target) replay_target=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done

# Why not --sanitize=address --sanitize=fuzzer: SwiftPM passes each as its own -sanitize= flag,
# in an order that changes from run to run, and swiftc keeps only the last one (a build that
# kept `address` had no coverage at all). --sanitize=fuzzer makes SwiftPM link libFuzzer's main;
# -Xswiftc -sanitize=address,fuzzer, which comes last, is what every module is compiled with.
export SWIFT_BACKTRACE=enable=no   # ASan prints the stack; the Swift backtracer would wait on a crash
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
bin=.build/fuzz/debug/vfiokit-fuzz

t=$SECONDS
echo "== VFIOKIT_FUZZ=1 swift build --build-path .build/fuzz --sanitize=fuzzer -Xswiftc -sanitize=address,fuzzer --product vfiokit-fuzz"
mkdir -p "$out"
VFIOKIT_FUZZ=1 swift build --build-path .build/fuzz --sanitize=fuzzer -Xswiftc -sanitize=address,fuzzer --product vfiokit-fuzz \
  > "$out/build.log" 2>&1
rc=$?
grep -vE '^\[[0-9]+/[0-9]+\]|ld.gold: warning: Cannot export local symbol' "$out/build.log" | tail -n 20
echo "   ($((SECONDS - t)) s)"
if [ $rc -ne 0 ]; then
  echo "fuzz.sh: the fuzz build failed (exit status $rc); log: $out/build.log" >&2
  echo "fuzz: 0 passed, 1 failed, 0 skipped" | tee "$out/fuzz.summary"
  exit 1
fi

if [ ${#replay[@]} -gt 0 ]; then
  VFIOKIT_FUZZ_TARGET=$replay_target "$bin" "${replay[@]}"
  exit $?
fi

if [ ${#targets[@]} -eq 0 ]; then
  read -r -a targets <<< "$(ls Fuzz/Corpus | tr '\n' ' ')"
fi
passed=0; failed=0
# The sysfs target's tree lives here (tmpfs: it rewrites files for every input).
scratch=$(mktemp -d /dev/shm/vfiokit-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export VFIOKIT_FUZZ_SCRATCH=$scratch
for target in "${targets[@]}"; do
  seeds="Fuzz/Corpus/$target"
  work=".build/fuzz/corpus/$target"
  art="$out/$target"
  [ -d "$seeds" ] || { echo "fuzz.sh: no seed corpus $seeds" >&2; failed=$((failed + 1)); continue; }
  rm -rf "$art"; mkdir -p "$work" "$art"
  # New inputs go to the first corpus directory (the work one); the seeds stay as they are.
  VFIOKIT_FUZZ_TARGET=$target "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$art/" -print_final_stats=1 "$work" "$seeds" > "$art/log" 2>&1
  rc=$?
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$art/log" | grep -oE '[0-9]+$')
  cov=$(grep -oE 'cov: [0-9]+' "$art/log" | tail -n 1)
  corpus=$(ls "$work" | wc -l)
  found=$(ls "$art" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' || true)
  if [ $rc -eq 0 ] && [ -z "$found" ]; then
    passed=$((passed + 1))
    echo "fuzz-$target: ok, ${runs:-?} runs in ${seconds} s, ${cov:-cov: ?}, corpus $(ls "$seeds" | wc -l) seeds + $corpus found"
  else
    failed=$((failed + 1))
    echo "fuzz-$target: FAILED (exit status $rc) ${found:+: $found}; log: $art/log" >&2
    grep -E '^==[0-9]+==ERROR|^SUMMARY|Fatal error|vfiokit-fuzz .*:' "$art/log" | head -n 8 >&2
  fi
done
echo "fuzz: $passed passed, $failed failed, 0 skipped" | tee "$out/fuzz.summary"
[ $failed -eq 0 ]
