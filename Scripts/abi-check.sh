#!/usr/bin/env bash
# ABI conformance check of CVFIO (and CIOMMUFDTest) against the kernel's headers.
#
#   Scripts/abi-check.sh [KERNEL_INCLUDE_DIR [IOMMUFD_TEST_H]]
#   Scripts/abi-check.sh --self-test [KERNEL_INCLUDE_DIR [IOMMUFD_TEST_H]]
#   ABI_SELF_TEST=1 Scripts/abi-check.sh ...        (same as --self-test)
#
# Defaults: the test-kernel cache of Scripts/test-kernel.sh --print, i.e.
# <cache>/include (make headers output) and <cache>/iommufd_test.h.
# Options passed through to Scripts/abi-check.py: -v/--verbose, --keep.
# Exit: 0 clean, 1 mismatched/missing/extra (or a self-test mutation not caught),
# 2 the check could not run. Needs python3 and clang (CLANG=... to choose one).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
args=()
positional=()
for a in "$@"; do
  case "$a" in
    --self-test) args+=(--self-test) ;;
    -v|--verbose|--keep) args+=("$a") ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "abi-check: unknown option $a" >&2; exit 2 ;;
    *) positional+=("$a") ;;
  esac
done
[ -n "${ABI_SELF_TEST:-}" ] && [ "${ABI_SELF_TEST}" != 0 ] && args+=(--self-test)

kinc=${positional[0]:-}
testh=${positional[1]:-}
if [ -z "$kinc" ]; then
  cache=$("$here/test-kernel.sh" --print) || { echo "abi-check: Scripts/test-kernel.sh --print failed" >&2; exit 2; }
  kinc="$cache/include"
  [ -n "$testh" ] || testh="$cache/iommufd_test.h"
fi
if [ -z "$testh" ] && [ -f "$(dirname "$kinc")/iommufd_test.h" ]; then
  testh="$(dirname "$kinc")/iommufd_test.h"
fi

command -v python3 >/dev/null || { echo "abi-check: python3 not found" >&2; exit 2; }
exec python3 "$here/abi-check.py" "${args[@]}" "$kinc" ${testh:+"$testh"}
