#!/usr/bin/env python3
"""Summarise a Swift Testing event stream (--event-stream-output-path, version 0).

Prints one line, `LABEL: N passed, N failed, N skipped`, and exits 1 when any
test failed or when no test ran at all (a run that tested nothing is not a pass).
Usage: test-summary.py LABEL EVENTS.jsonl [--allow-empty]
"""
import json
import sys


def main():
    label, path = sys.argv[1], sys.argv[2]
    allow_empty = "--allow-empty" in sys.argv[3:]
    kinds, ended, skipped, failed = {}, set(), set(), set()
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        print(f"{label}: 0 passed, 1 failed, 0 skipped")
        print(f"{label}: no test events ({e})", file=sys.stderr)
        return 1
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        p = rec.get("payload", {})
        if rec.get("kind") == "test":
            kinds[p["id"]] = p.get("kind")
            continue
        k, tid = p.get("kind"), p.get("testID")
        if k == "testEnded":
            ended.add(tid)
        elif k == "testSkipped":
            skipped.add(tid)
        elif k == "issueRecorded" and not p.get("issue", {}).get("isKnown", False):
            failed.add(tid or "<outside a test>")

    def functions_under(tid):
        if kinds.get(tid) == "function":
            return {tid}
        return {t for t, kd in kinds.items() if kd == "function" and (t.startswith(tid + "/") or t.startswith(tid + "."))}

    fn_ended = {t for t in ended if kinds.get(t) == "function"}
    fn_skipped = set().union(*[functions_under(t) for t in skipped]) if skipped else set()
    # an issue recorded in a suite-level hook fails every test of that suite
    fn_failed = set()
    for t in failed:
        fn_failed |= functions_under(t) if t in kinds else {t}
    passed = len(fn_ended - fn_failed)
    print(f"{label}: {passed} passed, {len(fn_failed)} failed, {len(fn_skipped - fn_ended)} skipped")
    for t in sorted(fn_failed):
        print(f"  failed: {t}", file=sys.stderr)
    if fn_failed or (passed == 0 and not allow_empty):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
