#!/usr/bin/env bash
# Builds the DocC documentation of the VFIOKit library product (the catalog
# Sources/VFIOKit/VFIOKit.docc and every public symbol re-exported by VFIOKit)
# with swift-docc-plugin. Any DocC warning (a broken symbol link, a missing
# article, a malformed directive) fails the build: --warnings-as-errors.
# Prints the number of public symbols without a doc comment (Scripts/undocumented.py)
# and a summary line "docs: N passed, N failed, 0 skipped" for Scripts/test.sh.
#
#   Scripts/docs.sh            build; the archive lands in .build/plugins/Swift-DocC/outputs/VFIOKit.doccarchive
#   Scripts/docs.sh --list     also list the undocumented symbols
set -uo pipefail
cd "$(dirname "$0")/.."
log=.build/docs.log
mkdir -p .build
swift package generate-documentation --target VFIOKit --warnings-as-errors --verbose > "$log" 2>&1
rc=$?
# docc prints each problem as "path:line:col: warning|error: ...".
grep -E '(warning|error):' "$log" | grep -v '^\[' | sort -u | tail -n 40
problems=$(grep -E '(warning|error):' "$log" | grep -v '^\[' | sort -u | wc -l)
graphs=$(sed -nE "s/.*target symbol graph directory path: '(.*)'.*/\1/p" "$log" | tail -n 1)
if [ -n "$graphs" ] && [ -d "$graphs" ]; then
  python3 Scripts/undocumented.py "$graphs" ${1:+"$1"} || rc=1
fi
if [ $rc -eq 0 ] && [ "$problems" -eq 0 ]; then
  echo "docs: 1 passed, 0 failed, 0 skipped"
else
  echo "docs.sh: swift package generate-documentation exited $rc with $problems warnings/errors; log: $log" >&2
  echo "docs: 0 passed, 1 failed, 0 skipped"
  exit 1
fi
