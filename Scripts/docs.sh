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
symbols=.build/docs-symbols
mkdir -p .build
: > "$log"
# VFIOKit's own symbol graph (what the plugin extracts) holds only the symbols
# declared in the VFIOKit target: the layers it re-exports (@_exported import)
# are left out unless swift-symbolgraph-extract is told to include them. So
# the build is: the modules, VFIOKit's graph with the re-exported modules'
# symbols (-experimental-allowed-reexported-modules), then the plugin with
# that graph added (docc's --additional-symbol-graph-dir), which merges it
# with its own.
swift build --explicit-target-dependency-import-check=error --target VFIOKit >> "$log" 2>&1 || { echo "docs.sh: swift build --target VFIOKit failed; log: $log" >&2
  echo "docs: 0 passed, 1 failed, 0 skipped"; exit 1; }
bin=$(swift build --show-bin-path)
rm -rf "$symbols"; mkdir -p "$symbols"
swift-symbolgraph-extract -module-name VFIOKit -target "$(uname -m)-unknown-linux-gnu" -I "$bin/Modules" \
  -Xcc -fmodule-map-file="$bin/CVFIO.build/module.modulemap" -Xcc -I -Xcc Sources/CVFIO/include \
  -Xcc -fmodule-map-file=.build/checkouts/swift-system/Sources/CSystem/include/module.modulemap \
  -minimum-access-level public -emit-extension-block-symbols \
  -experimental-allowed-reexported-modules=VFIOSystem,VFIOObjects,VFIODMA,VFIOHost \
  -output-dir "$symbols" >> "$log" 2>&1 || { echo "docs.sh: swift-symbolgraph-extract failed; log: $log" >&2
  echo "docs: 0 passed, 1 failed, 0 skipped"; exit 1; }
swift package generate-documentation --target VFIOKit --warnings-as-errors --additional-symbol-graph-dir "$symbols" \
  >> "$log" 2>&1
rc=$?
# docc prints each problem as "path:line:col: warning|error: ...".
grep -E '(warning|error):' "$log" | grep -v '^\[' | sort -u | tail -n 40
problems=$(grep -E '(warning|error):' "$log" | grep -v '^\[' | sort -u | wc -l)
python3 Scripts/undocumented.py "$symbols" ${1:+"$1"} || rc=1
if [ $rc -eq 0 ] && [ "$problems" -eq 0 ]; then
  echo "docs: 1 passed, 0 failed, 0 skipped"
else
  echo "docs.sh: swift package generate-documentation exited $rc with $problems warnings/errors; log: $log" >&2
  echo "docs: 0 passed, 1 failed, 0 skipped"
  exit 1
fi
