#!/usr/bin/env python3
"""Counts the public symbols of VFIOKit's documentation without a doc comment.

Reads the symbol graphs swift-docc-plugin extracted (Scripts/docs.sh passes the
directory) and prints one line per module and a total; with --list, every
undocumented symbol by module and path. A symbol counts as documented when it
has its own doc comment, or when DocC shows an inherited one: a protocol
requirement's implementation (a `description`, an `init(from:)`) or a
compiler-synthesized member. Enum cases count like any other symbol.
"""
import json, os, sys
from collections import defaultdict

def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    listing = "--list" in sys.argv
    if not args:
        print("usage: undocumented.py SYMBOL-GRAPH-DIR [--list]", file=sys.stderr)
        return 2
    seen = {}
    for root, _, files in os.walk(args[0]):
        for f in files:
            if not f.endswith(".symbols.json"):
                continue
            graph = json.load(open(os.path.join(root, f)))
            implements = {r["source"] for r in graph.get("relationships", [])
                          if r["kind"] in ("defaultImplementationOf", "requirementOf", "optionalRequirementOf")}
            for r in graph.get("relationships", []):
                # Members that satisfy a protocol requirement DocC documents from the protocol.
                if r["kind"] == "memberOf" and r.get("sourceOrigin"):
                    implements.add(r["source"])
            for s in graph.get("symbols", []):
                usr = s["identifier"]["precise"]
                if s.get("accessLevel") not in ("public", "open") or "::SYNTHESIZED::" in usr:
                    continue
                module = s.get("location", {}).get("uri", "").split("/Sources/")[-1].split("/")[0] or graph["module"]["name"]
                documented = bool(s.get("docComment", {}).get("lines")) or usr in implements
                prev = seen.get(usr)
                seen[usr] = (module, ".".join(s["pathComponents"]), s["kind"]["identifier"],
                             documented or (prev is not None and prev[3]))
    by_module = defaultdict(list)
    total = 0
    for module, path, kind, documented in seen.values():
        total += 1
        if not documented:
            by_module[module].append((path, kind))
    undocumented = sum(len(v) for v in by_module.values())
    for module in sorted(by_module):
        print(f"  {module}: {len(by_module[module])} undocumented")
        if listing:
            for path, kind in sorted(by_module[module]):
                print(f"    {path} ({kind.replace('swift.', '')})")
    print(f"undocumented public symbols: {undocumented} of {total}")
    return 0

sys.exit(main())
