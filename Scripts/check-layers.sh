#!/usr/bin/env bash
# Checks that the layers of the README's picture hold:
#   1. the package graph (`swift package dump-package`) has only the allowed arrows:
#      VFIOObjects -> VFIOSystem -> CVFIO, VFIOHost -> VFIOSystem, VFIODMA -> VFIOObjects,
#      VFIOKit -> the four, the CLI -> anything below; nothing upward or sideways;
#   2. no C library call in the library or the CLI outside Sources/VFIOSystem (the
#      syscall layer the fake kernel replaces): a grep over the names of the libc
#      functions VFIOKit could call, and `Glibc.`; prints the count, fails above 0;
#   3. every build in Scripts/test.sh uses --explicit-target-dependency-import-check=error
#      (without it SwiftPM lets a target import any module already built in the same
#      build directory, so an import the graph does not allow would compile).
#
#   Scripts/check-layers.sh            check this checkout
#   Scripts/check-layers.sh --root DIR check another tree (e.g. an older revision)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
[ "${1:-}" = "--root" ] && root=$2
status=0

echo "== 1. package graph"
graph=$(cd "$root" && swift package dump-package 2>/dev/null) || { echo "swift package dump-package failed"; exit 1; }
python3 - "$graph" <<'EOF' || status=1
import json, sys
pkg = json.loads(sys.argv[1])
# Allowed direct dependencies of each layer (targets by name, products as "product:NAME").
allowed = {
    "CVFIO": set(),
    "VFIOSystem": {"CVFIO", "product:SystemPackage"},
    "VFIOObjects": {"VFIOSystem", "CVFIO", "product:SystemPackage"},
    "VFIOHost": {"VFIOSystem", "product:SystemPackage"},
    "VFIODMA": {"VFIOObjects", "VFIOSystem", "CVFIO", "product:SystemPackage"},
    "VFIOKit": {"VFIOSystem", "VFIOObjects", "VFIODMA", "VFIOHost", "product:SystemPackage"},
    "VFIOCommands": {"VFIOKit", "VFIOSystem", "VFIOObjects", "VFIODMA", "VFIOHost", "CVFIO",
                     "product:SystemPackage", "product:ArgumentParser"},
    "vfioctl": {"VFIOCommands"},
}
library = ["VFIOSystem", "VFIOObjects", "VFIODMA", "VFIOHost", "VFIOKit"]
bad = 0
edges = 0
for t in pkg["targets"]:
    name = t["name"]
    deps = set()
    for d in t.get("dependencies", []):
        for kind, value in d.items():
            deps.add(("product:" if kind == "product" else "") + value[0])
    edges += len(deps)
    if name in allowed:
        for d in sorted(deps - allowed[name]):
            print(f"  not allowed: {name} -> {d.replace('product:', '')}")
            bad += 1
    elif name not in ("CIOMMUFDTest",):
        # Clients (tests, test support, benchmarks, examples, helper tools) may use any
        # layer; no layer may use them (checked above: layers only have allowed arrows).
        print(f"  client: {name} -> {', '.join(sorted(d.replace('product:', '') for d in deps))}")
products = {p["name"]: p["targets"] for p in pkg["products"]}
if products.get("VFIOKit") != ["VFIOKit"]:
    print(f"  the library product VFIOKit must be the VFIOKit target alone, is {products.get('VFIOKit')}")
    bad += 1
missing = [n for n in library if n not in {t["name"] for t in pkg["targets"]}]
for n in missing:
    print(f"  missing layer target {n}")
    bad += 1
print(f"  {edges} arrows, {bad} not allowed")
sys.exit(1 if bad else 0)
EOF

echo "== 2. C library calls outside Sources/VFIOSystem"
python3 "$(dirname "$0")/check-libc.py" "$root" || status=1

echo "== 3. builds check every import against the graph"
# Lines that run `swift build` (at the start of a command, or as a command substitution).
missing=$(cd "$root" && grep -nE '^[[:space:]]*(swift build|[A-Za-z_]+=\$\(swift build)' Scripts/test.sh \
  | grep -v -- '--explicit-target-dependency-import-check=error' || true)
runs=$(cd "$root" && grep -cE '^[[:space:]]*(swift build|[A-Za-z_]+=\$\(swift build)' Scripts/test.sh || true)
if [ "${runs:-0}" -eq 0 ]; then
  echo "  no swift build found in Scripts/test.sh"
  status=1
elif [ -n "$missing" ]; then
  printf '%s\n' "$missing" | sed 's/^/  without the import check: /'
  status=1
else
  echo "  every swift build in Scripts/test.sh ($runs) passes --explicit-target-dependency-import-check=error"
fi

[ $status -eq 0 ] && echo "layers: ok" || echo "layers: FAILED"
exit $status
