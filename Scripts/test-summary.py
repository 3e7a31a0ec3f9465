#!/usr/bin/env python3
"""Summarise a Swift Testing event stream (--event-stream-output-path, version 0)
and hold a guest run to its manifest.

  test-summary.py LABEL EVENTS.jsonl [--manifest FILE] [--console LOG] [--partial] [--allow-empty]
      Prints one line, `LABEL: N passed, N failed, N skipped`, and exits 1 when
      a test failed, when no test ran at all (a run that tested nothing is not a
      pass), or, with --manifest, when the run differs from the manifest: a
      listed test was skipped or did not run (missing), a test was skipped at
      all, or a test ran that is not listed (unlisted). Each such test counts as
      failed. --partial (a run limited with VFIOKIT_GUEST_FILTER) does not
      report listed tests that did not run. Without --manifest (the host run)
      only tests some guest manifest lists may be skipped. With --console (the
      guest's kernel log), each kernel warning, BUG, oops or panic there counts
      as a failure too: the guest kernel is built with CONFIG_BUG so they print.

  test-summary.py --write-manifest FILE EVENTS.jsonl
      Rewrites the test lines of manifest FILE from a run's events, keeping its
      comments and @ directives, and prints what changed. The deliberate way to
      change what a guest run must execute; review the diff before committing.

  test-summary.py --directive FILE NAME
      Prints the value of `@NAME` in manifest FILE (several @skip lines are
      joined into one regex with |). Used by Scripts/test.sh.

Manifest format (Tests/GuestManifest/*.txt): `#` comments; `@iommu intel|amd|virtio`,
`@filter REGEX` (the --filter of the run), `@skip REGEX` (repeatable: suites or
tests that do not apply, each with a comment saying why), `@vm OPTIONS` (extra
Scripts/vm.sh options for the boot); then one test per
line: its Swift Testing ID without the source location
(`VFIOKitGuestTests.EndToEndTests/eduDMARoundTripThroughIOMMUFD()`), and for a
parameterized test one line per argument: `ID [argument]`.
"""
import glob
import json
import os
import re
import sys

LOCATION = re.compile(r"/[^/]+\.swift:\d+:\d+$")
KERNEL_TROUBLE = re.compile(r"WARNING: CPU|BUG:|Oops:|general protection fault|Kernel panic|INFO: task .* blocked")


def kernel_trouble(path):
    """The console lines that report a kernel warning, BUG, oops or panic."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as e:
        return [f"cannot read the console log: {e}"]
    return [l.strip() for l in text.splitlines() if KERNEL_TROUBLE.search(l)]


def stable(tid):
    """A test ID without its source location (which moves with every edit)."""
    return LOCATION.sub("", tid or "")


def load(path):
    kinds, parameterized, ended, skipped, failed, cases, known = {}, set(), set(), set(), set(), set(), set()
    for line in open(path, encoding="utf-8").read().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        p = rec.get("payload", {})
        if rec.get("kind") == "test":
            kinds[p["id"]] = p.get("kind")
            if p.get("isParameterized"):
                parameterized.add(p["id"])
            continue
        k, tid = p.get("kind"), p.get("testID")
        if k == "testEnded":
            ended.add(tid)
        elif k == "testSkipped":
            skipped.add(tid)
        elif k == "testCaseEnded" and "_testCase" in p:
            cases.add((tid, p["_testCase"].get("displayName") or p["_testCase"].get("id")))
        elif k == "issueRecorded" and p.get("issue", {}).get("isKnown", False):
            known.add(tid or "<outside a test>")
        elif k == "issueRecorded" and p.get("issue", {}).get("severity", "error") != "warning":
            failed.add(tid or "<outside a test>")
    return kinds, parameterized, ended, skipped, failed, cases, known


def functions_under(kinds, tid):
    if kinds.get(tid) == "function":
        return {tid}
    return {t for t, kd in kinds.items() if kd == "function" and (t.startswith(tid + "/") or t.startswith(tid + "."))}


def executed(kinds, parameterized, ended, cases):
    """Manifest lines for what ran to the end: functions, and each argument of a parameterized one."""
    out = set()
    for t in ended:
        if kinds.get(t) != "function":
            continue
        if t in parameterized:
            out |= {f"{stable(t)} [{name}]" for (ct, name) in cases if ct == t}
        else:
            out.add(stable(t))
    return out


def read_manifest(path):
    tests, directives = [], {}
    for raw in open(path, encoding="utf-8").read().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            name, _, value = line[1:].partition(" ")
            directives.setdefault(name, []).append(value.strip())
            continue
        tests.append(line)
    return tests, directives


def summarise(label, path, manifest, partial, allow_empty, console=None):
    try:
        kinds, parameterized, ended, skipped, failed, cases, known = load(path)
    except OSError as e:
        print(f"{label}: 0 passed, 1 failed, 0 skipped")
        print(f"{label}: no test events ({e})", file=sys.stderr)
        return 1
    fn_ended = {t for t in ended if kinds.get(t) == "function"}
    fn_skipped = set().union(*[functions_under(kinds, t) for t in skipped]) if skipped else set()
    # an issue recorded in a suite-level hook fails every test of that suite
    fn_failed = set()
    for t in failed:
        fn_failed |= functions_under(kinds, t) if t in kinds else {t}
    passed = fn_ended - fn_failed
    problems = []  # (kind, test)
    if manifest is not None:
        listed, _ = read_manifest(manifest)
        listed_set = set(listed)
        ran = executed(kinds, parameterized, ended, cases)
        skipped_lines = set()
        for t in fn_skipped - fn_ended:
            s = stable(t)
            matching = {l for l in listed_set if l == s or l.startswith(s + " [")}
            skipped_lines |= matching or {s}
        problems += [("skipped", t) for t in sorted(skipped_lines)]
        if not partial:
            problems += [("missing", t) for t in sorted(listed_set - ran - skipped_lines)]
        problems += [("unlisted", t) for t in sorted(ran - listed_set)]
    else:
        # On the host only guest tests may skip (they are gated to the guest as a
        # whole): a test is a guest test when some guest manifest lists it.
        guest_tests = set()
        for m in glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "GuestManifest", "*.txt")):
            guest_tests |= {l.split(" [")[0] for l in read_manifest(m)[0]}
        problems += [("skipped outside the guest suites", stable(t))
                     for t in sorted(fn_skipped - fn_ended) if stable(t) not in guest_tests]
    if console is not None:
        problems += [("kernel", l) for l in kernel_trouble(console)]
    nfailed = len(fn_failed) + len(problems)
    line = f"{label}: {len(passed)} passed, {nfailed} failed, {len(fn_skipped - fn_ended)} skipped"
    if manifest is not None:
        counts = {k: sum(1 for kk, _ in problems if kk == k) for k in ("skipped", "missing", "unlisted")}
        if console is not None:
            counts["kernel warnings"] = sum(1 for kk, _ in problems if kk == "kernel")
        line += f" (manifest {manifest}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + \
            (", partial run" if partial else "") + ")"
    if known:
        line += f" ({len(known)} with a known issue)"
    print(line)
    for t in sorted(known):
        print(f"  known issue (withKnownIssue, not a failure): {stable(t)}", file=sys.stderr)
    for t in sorted(fn_failed):
        print(f"  failed: {t}", file=sys.stderr)
    for kind, t in problems:
        print(f"  {kind}: {t}", file=sys.stderr)
    if any(k == "unlisted" for k, _ in problems) or any(k == "missing" for k, _ in problems):
        print(f"  (a deliberate change of the tests? regenerate: Scripts/test-summary.py --write-manifest {manifest} {path})",
              file=sys.stderr)
    if fn_failed or problems or (not passed and not allow_empty):
        return 1
    return 0


def write_manifest(path, events):
    old_tests, _ = read_manifest(path)
    kinds, parameterized, ended, skipped, failed, cases, _ = load(events)
    ran = sorted(executed(kinds, parameterized, ended, cases))
    if not ran:
        print(f"write-manifest: no test ran in {events}; {path} left as it is", file=sys.stderr)
        return 1
    fn_skipped = set().union(*[functions_under(kinds, t) for t in skipped]) if skipped else set()
    for t in sorted(fn_skipped):
        print(f"write-manifest: warning: {stable(t)} was skipped in that run and is not listed", file=sys.stderr)
    kept = [l for l in open(path, encoding="utf-8").read().splitlines()
            if not l.strip() or l.lstrip().startswith(("#", "@"))]
    while kept and not kept[-1].strip():
        kept.pop()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(kept + [""] + ran) + "\n")
    for t in sorted(set(ran) - set(old_tests)):
        print(f"+ {t}")
    for t in sorted(set(old_tests) - set(ran)):
        print(f"- {t}")
    print(f"write-manifest: {path}: {len(ran)} tests")
    return 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "--write-manifest":
        return write_manifest(argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "--directive":
        _, directives = read_manifest(argv[1])
        values = directives.get(argv[2], [])
        if argv[2] == "vm":  # vm.sh options: words, joined with spaces
            print(" ".join(values))
            return 0
        print("|".join(f"(?:{v})" for v in values) if len(values) > 1 else (values[0] if values else ""))
        return 0
    if len(argv) < 2 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    label, path, rest = argv[0], argv[1], argv[2:]
    manifest = rest[rest.index("--manifest") + 1] if "--manifest" in rest else None
    console = rest[rest.index("--console") + 1] if "--console" in rest else None
    return summarise(label, path, manifest, "--partial" in rest, "--allow-empty" in rest, console)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
