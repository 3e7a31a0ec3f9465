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
      guest's kernel log), each kernel warning, BUG, oops, panic, hung task or
      RCU stall there counts as a failure too (the guest kernel is built with
      CONFIG_BUG so they print), except a WARN at a location listed in
      Tests/GuestManifest/kernel-findings.txt printed while a fail-nth sweep
      injected faults (between FailNth.sweep's `vfiokit: fault injection on/off`
      lines): a kernel error path that injection reaches, named on the line.

  test-summary.py --self-test
      Checks the kernel-log classification on a fixture (both WARNING formats).

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
# A kernel warning (Linux 7.2: "WARNING: drivers/x.c:12 at f+0x1/0x2, CPU#0: comm/pid";
# before: "WARNING: CPU: 0 PID: 1 at drivers/x.c:12 f+0x1/0x2"), BUG, oops, panic, a
# sanitizer of the kernel, a hung task or an RCU stall.
KERNEL_TROUBLE = re.compile(r"(?:^|\] )(WARNING: |BUG: |kernel BUG at |Oops|general protection fault|Kernel panic|UBSAN: |KASAN: |"
                            r"INFO: task .* blocked|rcu: INFO: .*detected stalls)")
WARN_LOCATION = re.compile(r"WARNING: (?:CPU: \d+ PID: \d+ at )?(\S+:\d+)")
# FailNth.sweep (VFIOKitTestSupport) writes these to /dev/kmsg around a sweep.
INJECTION_ON = re.compile(r"(?:^|\] )vfiokit: fault injection on ")
INJECTION_OFF = re.compile(r"(?:^|\] )vfiokit: fault injection off ")
FINDINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "GuestManifest", "kernel-findings.txt")


def read_findings(path):
    """The kernel's own WARNs that fault injection is known to provoke (file:line, reason)."""
    found = {}
    for line in open(path, encoding="utf-8").read().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            location, _, reason = line.partition(" ")
            found[location] = reason.strip()
    return found


def kernel_trouble(path, findings=FINDINGS):
    """The console's kernel trouble lines, as (counted, known): a WARN at a location of
    `findings` while fault injection was on is known (a kernel error path that fault
    injection reaches, listed with its reason); every other line of KERNEL_TROUBLE counts,
    inside or outside an injection window."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as e:
        return [f"cannot read the console log: {e}"], []
    known_locations = read_findings(findings)
    counted, known, injecting = [], [], False
    for l in text.splitlines():
        if INJECTION_ON.search(l):
            injecting = True
        elif INJECTION_OFF.search(l):
            injecting = False
        elif KERNEL_TROUBLE.search(l):
            m = WARN_LOCATION.search(l)
            if injecting and m and m.group(1) in known_locations:
                known.append(l.strip())
            else:
                counted.append(l.strip())
    return counted, known


# Lines of a kernel report that say nothing without the kernel's symbols: registers,
# code bytes, bare return addresses.
REPORT_NOISE = re.compile(r"\] +(?:(?:R[A-Z0-9]{1,3}|[CDEFG]S|CR\d|RSP|RIP|EFLAGS|Code):|\? 0x|</?TASK>|Call Trace:|"
                          r"Sending NMI|NMI backtrace|INFO: NMI handler)")


def trouble_context(path, first, limit=8):
    """What the kernel printed after the first console line containing `first` (an RCU
    stall, a hung task, a BUG): its report's lines, without registers and bare
    addresses, up to `limit`, ending at the next trouble line or one of ours."""
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return []
    for i, l in enumerate(lines):
        if first in l:
            out = []
            for f in lines[i + 1:i + 60]:
                if KERNEL_TROUBLE.search(f) or "vfiokit" in f or len(out) >= limit:
                    break
                if not REPORT_NOISE.search(f):
                    out.append(f.strip())
            return out
    return []


def unfinished(kinds, started, ended):
    """The test functions that started and never ended: what ran when a run stopped."""
    return sorted(stable(t) for t in started - ended if kinds.get(t) == "function")


def stable(tid):
    """A test ID without its source location (which moves with every edit)."""
    return LOCATION.sub("", tid or "")


def load(path):
    kinds, parameterized, started, ended, skipped, failed, cases, known = {}, set(), set(), set(), set(), set(), set(), set()
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
        if k == "testStarted":
            started.add(tid)
        elif k == "testEnded":
            ended.add(tid)
        elif k == "testSkipped":
            skipped.add(tid)
        elif k == "testCaseEnded" and "_testCase" in p:
            cases.add((tid, p["_testCase"].get("displayName") or p["_testCase"].get("id")))
        elif k == "issueRecorded" and p.get("issue", {}).get("isKnown", False):
            known.add(tid or "<outside a test>")
        elif k == "issueRecorded" and p.get("issue", {}).get("severity", "error") != "warning":
            failed.add(tid or "<outside a test>")
    return kinds, parameterized, started, ended, skipped, failed, cases, known


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
        kinds, parameterized, started, ended, skipped, failed, cases, known = load(path)
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
    known_kernel = []
    if console is not None:
        counted, known_kernel = kernel_trouble(console)
        problems += [("kernel", l) for l in counted]
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
    if known_kernel:
        locations = sorted({m.group(1) for m in map(WARN_LOCATION.search, known_kernel) if m})
        line += f" ({len(known_kernel)} known kernel WARNs under fault injection: {', '.join(locations)})"
    print(line)
    for t in sorted(known):
        print(f"  known issue (withKnownIssue, not a failure): {stable(t)}", file=sys.stderr)
    for t in sorted(fn_failed):
        print(f"  failed: {t}", file=sys.stderr)
    # A run that stopped leaves a long list of missing tests; the few lines that say why
    # (what was running, what the kernel said) come last, where a log's tail shows them.
    missing = [t for k, t in problems if k == "missing"]
    for kind, t in problems:
        if kind == "missing" and len(missing) > 12 and t not in missing[:5]:
            continue
        print(f"  {kind}: {t}", file=sys.stderr)
        if kind == "kernel" and not WARN_LOCATION.search(t):
            for c in trouble_context(console, t.split("] ", 1)[-1]):
                print(f"    {c}", file=sys.stderr)
        if kind == "missing" and len(missing) > 12 and t == missing[4]:
            print(f"  missing: ... and {len(missing) - 5} more (the run stopped early?)", file=sys.stderr)
    stopped = unfinished(kinds, started, ended) if missing else []
    for t in stopped:
        print(f"  started and never ended (running when the run stopped): {t}", file=sys.stderr)
    if stopped:
        # Regenerating the manifest from a run that stopped would drop the tests it never reached.
        print(f"  (the run stopped before its end: the guest's console is {console})" if console else
              "  (the run stopped before its end)", file=sys.stderr)
    elif any(k == "unlisted" for k, _ in problems) or missing:
        print(f"  (a deliberate change of the tests? regenerate: Scripts/test-summary.py --write-manifest {manifest} {path})",
              file=sys.stderr)
    if fn_failed or problems or (not passed and not allow_empty):
        return 1
    return 0


def write_manifest(path, events):
    old_tests, _ = read_manifest(path)
    kinds, parameterized, _, ended, skipped, failed, cases, _ = load(events)
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


SELF_TEST_CONSOLE = """\
[    5.0] vfiokit-init: init started
[    6.1] WARNING: drivers/vfio/foo.c:12 at foo+0x1/0x2, CPU#0: swift/70
[    6.2] Call Trace:
[    7.0] vfiokit: fault injection on (bindAndRestoreDriver)
[    7.1] kobject: kobject_add_internal failed for 1 (error: -12 parent: vfio)
[    7.2] WARNING: drivers/vfio/group.c:510 at vfio_group_release+0x12/0x40, CPU#0: swift/102
[    7.3] WARNING: mm/unknown.c:1 at bar+0x1/0x2, CPU#1: swift/102
[    7.4] vfiokit: fault injection off (bindAndRestoreDriver)
[    8.0] ------------[ cut here ]------------
[    8.1] WARNING: CPU: 1 PID: 66 at drivers/iommu/iommu.c:157 x+0x1/0x2
[    8.2] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   71.3] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:
[   71.4] rcu: 	0-...!: (1 GPs behind) idle=4948/0/0x0 softirq=4593/4593 fqs=1 (false positive?)
[   71.5] rcu: 	(detected by 1, t=5252 jiffies, g=15181, q=2461 ncpus=2)
[   71.6] rcu: rcu_sched kthread timer wakeup didn't happen for 5245 jiffies! g15181 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402
[   71.7] rcu: 	Possible timer handling issue on cpu=0 timer-softirq=3918
[   72.0] vfiokit-init: command exited with status 0
"""

SELF_TEST_EVENTS = [
    {"kind": "test", "payload": {"id": "S/a()/A.swift:1:1", "kind": "function"}},
    {"kind": "test", "payload": {"id": "S/b()/A.swift:2:1", "kind": "function"}},
    {"kind": "event", "payload": {"kind": "testStarted", "testID": "S/a()/A.swift:1:1"}},
    {"kind": "event", "payload": {"kind": "testStarted", "testID": "S/b()/A.swift:2:1"}},
    {"kind": "event", "payload": {"kind": "testEnded", "testID": "S/a()/A.swift:1:1"}},
]

SELF_TEST_FINDINGS = """\
# location  reason
drivers/vfio/group.c:510  vfio_group_release after a failed device_add (fixture)
"""


def self_test():
    """Checks the console classification on a fixture (Linux 7.2's WARNING format, the
    older one, BUG, fault-injection windows, known findings); exits non-zero on a mismatch."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        console, findings = os.path.join(d, "console.log"), os.path.join(d, "findings.txt")
        open(console, "w").write(SELF_TEST_CONSOLE)
        open(findings, "w").write(SELF_TEST_FINDINGS)
        trouble, known = kernel_trouble(console, findings)
        stall = trouble_context(console, "rcu: INFO: rcu_sched detected stalls")
        events = os.path.join(d, "events.jsonl")
        open(events, "w").write("".join(json.dumps(e) + "\n" for e in SELF_TEST_EVENTS))
        kinds, _, started, ended, *_ = load(events)
    want_trouble = ["drivers/vfio/foo.c:12", "mm/unknown.c:1", "drivers/iommu/iommu.c:157", "BUG: kernel NULL pointer",
                    "rcu: INFO: rcu_sched detected stalls"]
    want_known = ["drivers/vfio/group.c:510"]
    ok = len(trouble) == len(want_trouble) and all(w in t for w, t in zip(want_trouble, trouble)) \
        and len(known) == len(want_known) and all(w in k for w, k in zip(want_known, known))
    if not ok:
        print("self-test: kernel_trouble misclassified the fixture console:", file=sys.stderr)
        print(f"  counted as trouble: {trouble}\n  want: {want_trouble}", file=sys.stderr)
        print(f"  known under fault injection: {known}\n  want: {want_known}", file=sys.stderr)
    # A stall's report is the lines after its first: they say which CPU and why.
    want_stall = ["(detected by 1", "timer wakeup didn't happen", "Possible timer handling issue on cpu=0"]
    if not all(any(w in l for l in stall) for w in want_stall) or any("vfiokit-init" in l for l in stall):
        ok = False
        print(f"self-test: trouble_context gave {stall}\n  want the rcu: lines after the stall, with {want_stall}",
              file=sys.stderr)
    # A run that stops (a hung guest) leaves tests started and never ended: name them.
    if unfinished(kinds, started, ended) != ["S/b()"]:
        ok = False
        print(f"self-test: unfinished gave {unfinished(kinds, started, ended)}, want ['S/b()']", file=sys.stderr)
    print(f"test-summary-self-test: {1 if ok else 0} passed, {0 if ok else 1} failed, 0 skipped")
    return 0 if ok else 1


def main(argv):
    if argv[:1] == ["--self-test"]:
        return self_test()
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
