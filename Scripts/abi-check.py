#!/usr/bin/env python3
"""ABI conformance check: CVFIO / CIOMMUFDTest against the kernel's own headers.

Discovers every record, field, enum, enum constant, object-like macro (ioctl
requests included) and function-like macro that the kernel defines in
linux/vfio.h, linux/iommufd.h and drivers/iommu/iommufd/iommufd_test.h, then
compiles two separate programs (kernel headers / our headers: they share names,
so never one translation unit) that print sizeof, _Alignof, offsetof, member
sizes and constant values, and compares them. Field types are compared from the
two ASTs (canonical C type plus any aligned() attribute).

Kernel ABI rule: structs grow only by appending fields. A kernel field missing
from ours is therefore reported as "not yet bound" (and does not fail) when it
and every field after it are missing and it starts at or after the end of our
last field; any other missing item fails.

Needs only python3 (stdlib) and clang (AST, preprocessing, compiling); see
Scripts/abi-check.sh for usage.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# --------------------------------------------------------------------------- tools


class CheckError(Exception):
    pass


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise CheckError("command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-4000:]))
    return p.stdout


def real(path):
    return os.path.realpath(path)


# --------------------------------------------------------------------------- inventory


class Field:
    def __init__(self, path, ctype, aligned, flex):
        self.path = path          # "a" or "a.b" (anonymous members flattened, as C spells them)
        self.ctype = ctype        # canonical C type, anonymous record types normalized
        self.aligned = aligned    # value of an aligned() attribute on the member, or None
        self.flex = flex          # flexible array member

    def type_desc(self):
        return self.ctype + (" aligned(%s)" % self.aligned if self.aligned else "")


class Record:
    def __init__(self, tag, name):
        self.tag = tag
        self.name = name
        self.fields = []

    @property
    def cname(self):
        return "%s %s" % (self.tag, self.name)


class Inventory:
    """What one side (kernel or ours) declares in its target header files."""

    def __init__(self):
        self.records = {}       # "struct x" -> Record
        self.enums = {}         # "enum x" -> [constant names]
        self.enum_consts = {}   # name -> "enum x" or None (anonymous enum)
        self.vars = {}          # name -> C type (static const variables)
        self.funcs = set()      # function names
        self.macros = {}        # object-like: name -> body
        self.fmacros = {}       # function-like: name -> (params, body)

    def constant_kind(self, name):
        if name in self.enum_consts:
            return "enum constant"
        if name in self.vars:
            return "static const"
        if name in self.macros:
            return "macro"
        return None


ANON_RE = re.compile(r"(struct|union|enum)\s+(?:[\w]+::)*\((?:anonymous|unnamed)[^)]*\)")
ANON_RE2 = re.compile(r"\((?:anonymous|unnamed)(?: struct| union| enum)? at [^)]*\)")


class AstReader:
    """Reads clang's JSON AST, keeping track of the file each declaration is in.

    clang writes a location's "file" only when it differs from the previous
    location it wrote, so locations are replayed in document order.
    """

    def __init__(self, targets):
        self.targets = set(real(t) for t in targets)
        self.cur = None
        self.typedefs = {}

    def see(self, loc):
        if not isinstance(loc, dict):
            return
        if "spellingLoc" in loc or "expansionLoc" in loc:
            self.see(loc.get("spellingLoc"))
            self.see(loc.get("expansionLoc"))
            return
        if "file" in loc:
            self.cur = loc["file"]

    def replay(self, node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "loc":
                    self.see(v)
                elif k == "range":
                    self.see(v.get("begin"))
                    self.see(v.get("end"))
                elif isinstance(v, (dict, list)):
                    self.replay(v)
        elif isinstance(node, list):
            for x in node:
                self.replay(x)

    def canon(self, tinfo):
        t = tinfo.get("desugaredQualType") or tinfo.get("qualType", "")
        for _ in range(8):  # resolve typedef names token-wise (pointers are not desugared in the JSON)
            new = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: self.typedefs.get(m.group(0), m.group(0)), t)
            if new == t:
                break
            t = new
        t = ANON_RE.sub(lambda m: m.group(1) + " (anonymous)", t)
        t = ANON_RE2.sub("(anonymous)", t)
        return re.sub(r"\s+", " ", t).strip()

    def read(self, ast, inv):
        for node in ast.get("inner", []):
            kind = node.get("kind")
            self.see(node.get("loc"))
            in_target = self.cur is not None and real(self.cur) in self.targets
            if kind == "TypedefDecl":
                t = node.get("type", {})
                self.typedefs[node["name"]] = t.get("desugaredQualType") or t.get("qualType")
            self.replay(node)
            if not in_target or node.get("isImplicit"):
                continue
            if kind == "RecordDecl" and node.get("name") and node.get("completeDefinition"):
                self.record(node, inv)
            elif kind == "EnumDecl":
                ename = ("enum " + node["name"]) if node.get("name") else None
                names = [c["name"] for c in node.get("inner", []) if c.get("kind") == "EnumConstantDecl"]
                for n in names:
                    inv.enum_consts[n] = ename
                if ename:
                    inv.enums[ename] = names
            elif kind == "VarDecl":
                inv.vars[node["name"]] = self.canon(node.get("type", {}))
            elif kind == "FunctionDecl":
                inv.funcs.add(node["name"])

    def record(self, node, inv):
        rec = Record(node.get("tagUsed", "struct"), node["name"])
        inv.records[rec.cname] = rec
        self.fields(node, "", rec.fields, inv)

    def fields(self, node, prefix, out, inv):
        pending = None  # the anonymous record definition preceding the member that uses it
        for c in node.get("inner", []):
            k = c.get("kind")
            if k == "RecordDecl":
                if c.get("name"):
                    if c.get("completeDefinition"):
                        self.record(c, inv)  # C: a nested named struct has file scope
                else:
                    pending = c
            elif k == "FieldDecl":
                name = c.get("name")
                qt = c.get("type", {}).get("qualType", "")
                anon_type = "(anonymous" in qt or "(unnamed" in qt
                if c.get("isBitfield"):
                    raise CheckError("bit-field %s%s is not supported by this checker" % (prefix, name))
                if not name:
                    if pending is None:
                        raise CheckError("anonymous member without definition in %s" % prefix)
                    self.fields(pending, prefix, out, inv)  # C flattens anonymous members
                    pending = None
                    continue
                path = prefix + name
                aligned = None
                for a in c.get("inner", []):
                    if a.get("kind") == "AlignedAttr":
                        vals = [x.get("value") for x in a.get("inner", []) if "value" in x]
                        aligned = vals[0] if vals else "default"
                ctype = self.canon(c.get("type", {}))
                out.append(Field(path, ctype, aligned, ctype.endswith("[]")))
                if anon_type and pending is not None:
                    self.fields(pending, path + ".", out, inv)
                    pending = None


DEFINE_RE = re.compile(r"^#define\s+([A-Za-z_]\w*)(\([^)]*\))?\s?(.*)$")
UNDEF_RE = re.compile(r"^#undef\s+([A-Za-z_]\w*)")
MARKER_RE = re.compile(r'^#\s+\d+\s+"((?:[^"\\]|\\.)*)"')


def read_macros(text, targets, inv):
    targets = set(real(t) for t in targets)
    cur = None
    for line in text.splitlines():
        m = MARKER_RE.match(line)
        if m:
            cur = m.group(1)
            continue
        if cur is None or real(cur) not in targets:
            continue
        m = DEFINE_RE.match(line)
        if m:
            name, params, body = m.group(1), m.group(2), m.group(3).strip()
            if params is not None:
                inv.fmacros[name] = (params, body)
            else:
                inv.macros[name] = body
            continue
        m = UNDEF_RE.match(line)
        if m:
            inv.macros.pop(m.group(1), None)
            inv.fmacros.pop(m.group(1), None)


REQUEST_RE = re.compile(r"\b_IO(?:R|W|WR)?\s*\(")


def is_guard(name, body):
    return body in ("", "1") and name.endswith("_H")


# --------------------------------------------------------------------------- programs

PRELUDE = r"""
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
%(includes)s
#define ABI_SIGNED(x) _Generic((x), char: CHAR_MIN < 0, signed char: 1, short: 1, int: 1, long: 1, \
    long long: 1, unsigned char: 0, unsigned short: 0, unsigned int: 0, unsigned long: 0, \
    unsigned long long: 0, _Bool: 0, default: ((x) - (x) - 1) < 0)
#define ABI_TYPENAME(x) _Generic((x), char: "char", signed char: "signed char", short: "short", \
    int: "int", long: "long", long long: "long long", unsigned char: "unsigned char", \
    unsigned short: "unsigned short", unsigned int: "unsigned int", unsigned long: "unsigned long", \
    unsigned long long: "unsigned long long", _Bool: "_Bool", char *: "char *", \
    const char *: "const char *", default: "other")
static void abi_int(const char *k, const void *p, unsigned long long v, int neg, int size, const char *t)
{
	(void)p;
	printf("%%s\ti %%d %%d %%llu %%s\n", k, neg, size, v, t);
}
static void abi_str(const char *k, const void *p, unsigned long long v, int neg, int size, const char *t)
{
	(void)v; (void)neg; (void)size;
	printf("%%s\ts\t%%s\t%%s\n", k, t, (const char *)p);
}
#define ABI_CONST(k, x) _Generic((x), char *: abi_str, const char *: abi_str, default: abi_int)( \
    k, (const void *)(uintptr_t)(x), (unsigned long long)(x), ABI_SIGNED(x), (int)sizeof(x), ABI_TYPENAME(x))
int main(void)
{
"""

FN_INPUTS = list(range(0, 16)) + [0xF0, 0xFFFFFFF8, 0xFFFFFFFF]


class Program:
    def __init__(self, includes):
        self.includes = includes
        self.lines = []

    def emit(self, fmt_key, expr_fmt, expr):
        self.lines.append('\tprintf("%s\\t%s\\n", %s);' % (fmt_key, expr_fmt, expr))

    def record(self, rec, fields):
        c = rec.cname
        self.emit("sizeof|" + c, "%zu", "sizeof(%s)" % c)
        self.emit("alignof|" + c, "%zu", "_Alignof(%s)" % c)
        for f in fields:
            self.emit("offsetof|%s|%s" % (c, f.path), "%zu", "offsetof(%s, %s)" % (c, f.path))
            if not f.flex:
                self.emit("fsize|%s|%s" % (c, f.path), "%zu", "sizeof(((%s *)0)->%s)" % (c, f.path))

    def enum(self, ename):
        self.emit("sizeof|" + ename, "%zu", "sizeof(%s)" % ename)
        self.emit("signed|" + ename, "%d", "(int)((%s)-1 < 0)" % ename)

    def const(self, name):
        self.lines.append('\tABI_CONST("const|%s", %s);' % (name, name))

    def func(self, name):
        for i in FN_INPUTS:
            self.emit("fn|%s|%d" % (name, i), "%lld", "(long long)%s(%dU)" % (name, i))

    def source(self):
        inc = "\n".join("#include %s" % i for i in self.includes)
        return PRELUDE % {"includes": inc} + "\n".join(self.lines) + "\n\treturn 0;\n}\n"


def build_and_run(cc, prog, flags, workdir, tag):
    src = os.path.join(workdir, "abi_%s.c" % tag)
    exe = os.path.join(workdir, "abi_%s" % tag)
    with open(src, "w") as f:
        f.write(prog.source())
    p = subprocess.run([cc, "-std=gnu11", "-w", "-o", exe, src] + flags,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise CheckError("the %s program does not compile (%s):\n%s" % (tag, src, p.stderr[-6000:]))
    out = run([exe])
    values = {}
    for line in out.splitlines():
        k, _, v = line.partition("\t")  # values of strings hold further tabs
        values[k] = v
    return values


# --------------------------------------------------------------------------- one ABI


class Side:
    def __init__(self, label, source_text, flags, targets):
        self.label = label
        self.source_text = source_text  # the translation unit: #include lines
        self.flags = flags
        self.targets = targets
        self.inv = Inventory()

    def discover(self, clang, workdir):
        src = os.path.join(workdir, "discover_%s.c" % self.label)
        with open(src, "w") as f:
            f.write(self.source_text)
        ast = json.loads(run([clang, "-x", "c", "-std=gnu11", "-fsyntax-only", "-Xclang", "-ast-dump=json",
                              "-fno-color-diagnostics", src] + self.flags))
        AstReader(self.targets).read(ast, self.inv)
        pp = run([clang, "-x", "c", "-std=gnu11", "-E", "-dD", src] + self.flags)
        read_macros(pp, self.targets, self.inv)


def as_int(v):
    """'i neg size bits type' -> (mathematical value, neg, size, type)"""
    parts = v.split(" ", 4)
    neg, size, bits = int(parts[1]), int(parts[2]), int(parts[3])
    ctype = parts[4] if len(parts) > 4 else "?"
    if neg and bits >= 1 << 63:
        bits -= 1 << 64
    return bits, neg, size, ctype


class Checker:
    def __init__(self, args, report):
        self.args = args
        self.r = report

    def check_abi(self, title, kernel, ours, clang, cc, workdir):
        r = self.r
        kernel.discover(clang, workdir)
        ours.discover(clang, workdir)
        K, O = kernel.inv, ours.inv
        if not K.records and not K.macros and not K.enum_consts:
            raise CheckError("%s: found nothing in the kernel's %s (wrong path?)" % (title, ", ".join(kernel.targets)))

        kp = Program([l.split(" ", 1)[1] for l in kernel.source_text.splitlines() if l.startswith("#include")])
        op = Program([l.split(" ", 1)[1] for l in ours.source_text.splitlines() if l.startswith("#include")])

        for cname, rec in K.records.items():
            kp.record(rec, rec.fields)
            if cname in O.records:
                orec = O.records[cname]
                kpaths = set(f.path for f in rec.fields)
                op.record(orec, [f for f in orec.fields if f.path in kpaths])
        for ename in K.enums:
            kp.enum(ename)
            if ename in O.enums:
                op.enum(ename)

        kconsts = []  # (name, category)
        for name, body in K.macros.items():
            if is_guard(name, body):
                r.skipped.append("%s: include guard %s" % (title, name))
                continue
            kconsts.append((name, "request" if REQUEST_RE.search(body) else "constant"))
        for name in K.enum_consts:
            kconsts.append((name, "enum constant"))
        for name, _ in kconsts:
            kp.const(name)
            if O.constant_kind(name):
                op.const(name)
        for name in K.fmacros:
            kp.func(name)
            if name in O.funcs:
                op.func(name)

        kv = build_and_run(cc, kp, kernel.flags, workdir, "kernel_" + kernel.label)
        ov = build_and_run(cc, op, ours.flags, workdir, "ours_" + ours.label)

        # records and fields
        for cname, rec in K.records.items():
            r.count("structs")
            if cname not in O.records:
                r.missing("%s (%d fields)" % (cname, len(rec.fields)))
                continue
            orec = O.records[cname]
            ofields = dict((f.path, f) for f in orec.fields)
            missing = [f for f in rec.fields if f.path not in ofields]
            appended = False
            if missing:
                first = rec.fields.index(missing[0])
                trailing = all(f.path not in ofields for f in rec.fields[first:])
                ends = [int(ov["offsetof|%s|%s" % (cname, f.path)]) +
                        (0 if f.flex else int(ov["fsize|%s|%s" % (cname, f.path)]))
                        for f in orec.fields if f.path in set(x.path for x in rec.fields)]
                our_end = max(ends) if ends else 0
                start = int(kv["offsetof|%s|%s" % (cname, missing[0].path)])
                appended = trailing and start >= our_end
                for f in missing:
                    if appended:
                        r.not_yet_bound("%s.%s" % (rec.name, f.path))
                    else:
                        r.missing("field %s.%s" % (cname, f.path))
            if appended:
                r.note("%s: sizes not compared (kernel %s, ours %s) because of unbound appended fields" %
                       (cname, kv["sizeof|" + cname], ov["sizeof|" + cname]))
            else:
                r.compare("sizeof(%s)" % cname, ov["sizeof|" + cname], kv["sizeof|" + cname])
                r.compare("alignof(%s)" % cname, ov["alignof|" + cname], kv["alignof|" + cname])
            for f in rec.fields:
                r.count("fields")
                if f.path not in ofields:
                    continue
                of = ofields[f.path]
                key = "%s|%s" % (cname, f.path)
                r.compare("offsetof(%s, %s)" % (cname, f.path), ov["offsetof|" + key], kv["offsetof|" + key])
                if not f.flex and not of.flex:
                    r.compare("sizeof(((%s *)0)->%s)" % (cname, f.path), ov["fsize|" + key], kv["fsize|" + key])
                r.compare("type(%s, %s)" % (cname, f.path), "'%s'" % of.type_desc(), "'%s'" % f.type_desc())
            for f in orec.fields:
                if f.path not in set(x.path for x in rec.fields):
                    r.extra("field %s.%s" % (cname, f.path))
        for cname in O.records:
            if cname not in K.records:
                r.extra(cname)

        # named enums
        for ename, names in K.enums.items():
            r.count("enums")
            if ename not in O.enums:
                r.missing(ename)
                continue
            r.compare("sizeof(%s)" % ename, ov["sizeof|" + ename], kv["sizeof|" + ename])
            r.compare("signedness(%s)" % ename, ov["signed|" + ename], kv["signed|" + ename])
        for ename in O.enums:
            if ename not in K.enums:
                r.extra(ename)

        # constants, requests, enum constants
        for name, cat in kconsts:
            r.count({"request": "requests", "constant": "constants", "enum constant": "enum constants"}[cat])
            okind = O.constant_kind(name)
            if okind is None:
                r.missing("%s %s" % (cat, name))
                continue
            if cat == "enum constant":
                kenum = K.enum_consts[name]
                if okind != "enum constant" or O.enum_consts.get(name) != kenum:
                    r.mismatch("kind(%s): ours %s%s, kernel constant of %s" % (
                        name, okind, (" of " + (O.enum_consts[name] or "an anonymous enum")) if okind == "enum constant" else "",
                        kenum or "an anonymous enum"))
                else:
                    r.checked += 1
            elif okind == "macro":
                r.mismatch("kind(%s): ours is a macro; bind it as a typed static const (macros import into Swift as Int32, request macros not at all)" % name)
            elif okind != "static const":
                r.mismatch("kind(%s): ours is an %s; bind the kernel's macro as a typed static const" % (name, okind))
            elif not re.search(r"(^const\b|\bconst$)", O.vars[name]):
                r.mismatch("kind(%s): ours is not const ('%s'); a mutable C global is an error in Swift 6" % (name, O.vars[name]))
            else:
                r.checked += 1
            self.compare_value(name, cat, ov["const|" + name], kv["const|" + name])
        kall = set(K.macros) | set(K.enum_consts) | set(K.fmacros)
        for name in list(O.vars) + list(O.enum_consts) + list(O.macros):
            if name in kall:
                continue
            if name in O.macros and (is_guard(name, O.macros[name]) or name.startswith("CVFIO_")):
                continue
            r.extra("constant %s (%s)" % (name, O.constant_kind(name)))

        # function-like macros: ours are functions, compared on sample inputs
        for name in K.fmacros:
            r.count("functions")
            if name not in O.funcs:
                r.missing("function-like macro %s%s (bind as a static inline function)" % (name, K.fmacros[name][0]))
                continue
            bad = [i for i in FN_INPUTS if ov["fn|%s|%d" % (name, i)] != kv["fn|%s|%d" % (name, i)]]
            if bad:
                i = bad[0]
                r.mismatch("%s(%#x): ours %s, kernel %s" % (name, i, ov["fn|%s|%d" % (name, i)], kv["fn|%s|%d" % (name, i)]))
            else:
                r.checked += 1

    def compare_value(self, name, cat, ours, kernel):
        r = self.r
        if kernel.startswith("s\t") or ours.startswith("s\t"):
            ks = kernel.split("\t", 2)[2] if kernel.startswith("s\t") else None
            os_ = ours.split("\t", 2)[2] if ours.startswith("s\t") else None
            if ks is None or os_ is None:
                r.mismatch("%s: ours %s, kernel %s" % (name, "string" if os_ is not None else "integer",
                                                       "string" if ks is not None else "integer"))
            elif ks != os_:
                r.mismatch('%s: ours "%s", kernel "%s"' % (name, os_, ks))
            else:
                r.checked += 1
            r.typed(name, "const char *")
            return
        kval, kneg, ksize, ktype = as_int(kernel)
        oval, oneg, osize, otype = as_int(ours)
        r.typed(name, otype)
        same = kval == oval
        if not same and kval < 0 and not oneg:
            # the kernel writes e.g. -1 or (1 << 31) for a value stored in an unsigned field
            same = (kval % (1 << (8 * osize))) == oval and kval >= -(1 << (8 * osize - 1))
        if cat == "request":
            if not same:
                r.mismatch("request %s: ours %#x, kernel %#x" % (name, oval, kval))
                return
            if otype != "unsigned long":
                r.mismatch("type(%s): ours %s, expected unsigned long (imports into Swift as UInt)" % (name, otype))
                return
            r.checked += 1
            if r.verbose:
                r.say("ok request %s = %#x" % (name, oval))
            return
        if not same:
            r.mismatch("value(%s): ours %s (%s), kernel %s (%s)" % (name, oval, otype, kval, ktype))
            return
        r.checked += 1
        if r.verbose:
            r.say("ok %s = %s (ours %s, kernel %s)" % (name, oval, otype, ktype))


# --------------------------------------------------------------------------- report


class Report:
    def __init__(self, version, quiet=False, verbose=False):
        self.version = version
        self.quiet = quiet
        self.verbose = verbose
        self.checked = 0
        self.n_mismatch = 0
        self.n_missing = 0
        self.n_unbound = 0
        self.n_extra = 0
        self.counts = {}
        self.skipped = []
        self.types = {}

    def say(self, line):
        if not self.quiet:
            print(line)

    def count(self, what):
        self.counts[what] = self.counts.get(what, 0) + 1

    def compare(self, what, ours, kernel):
        if str(ours) != str(kernel):
            self.mismatch("%s: ours %s, kernel %s" % (what, ours, kernel))
        else:
            self.checked += 1
            if self.verbose:
                self.say("ok %s = %s" % (what, ours))

    def mismatch(self, text):
        self.n_mismatch += 1
        self.say("MISMATCH " + text)

    def missing(self, text):
        self.n_missing += 1
        self.say("MISSING %s" % text)

    def not_yet_bound(self, text):
        self.n_unbound += 1
        self.say("in kernel %s, not yet bound: %s" % (self.version, text))

    def extra(self, text):
        self.n_extra += 1
        self.say("EXTRA %s (ours, not in the kernel)" % text)

    def note(self, text):
        if self.verbose:
            self.say("note: " + text)

    def typed(self, name, ctype):
        self.types[name] = ctype

    def failed(self):
        return self.n_mismatch or self.n_missing or self.n_extra

    def summary(self):
        order = ["structs", "fields", "enums", "requests", "constants", "enum constants", "functions"]
        parts = ["%d %s" % (self.counts.get(k, 0), k) for k in order]
        self.say("abi: kernel %s items: %s" % (self.version, ", ".join(parts)))
        if self.verbose:
            by = {}
            for n, t in self.types.items():
                by.setdefault(t, []).append(n)
            for t in sorted(by):
                self.say("abi: ours typed %s: %d" % (t, len(by[t])))
        print("abi: %d checked, %d mismatched, %d missing, %d not yet bound, %d extra" % (
            self.checked, self.n_mismatch, self.n_missing, self.n_unbound, self.n_extra))


# --------------------------------------------------------------------------- main


def kernel_version(kdir):
    vh = os.path.join(kdir, "linux", "version.h")
    try:
        text = open(vh).read()
        ma = re.search(r"LINUX_VERSION_MAJOR\s+(\d+)", text)
        mi = re.search(r"LINUX_VERSION_PATCHLEVEL\s+(\d+)", text)
        if ma and mi:
            return "%s.%s" % (ma.group(1), mi.group(1))
    except OSError:
        pass
    vf = os.path.join(os.path.dirname(os.path.normpath(kdir)), "version")
    try:
        m = re.match(r"(\d+\.\d+)", open(vf).read().strip())
        if m:
            return m.group(1)
    except OSError:
        pass
    return "kernel"


def find_clang():
    for c in (os.environ.get("CLANG"), shutil.which("clang"), "/opt/swift/usr/bin/clang"):
        if c and os.path.exists(c) or (c and shutil.which(c)):
            return c
    for v in range(21, 10, -1):
        c = shutil.which("clang-%d" % v)
        if c:
            return c
    raise CheckError("clang not found (set CLANG=/path/to/clang)")


def check(args, report):
    kdir = os.path.abspath(args.kernel_include)
    for h in ("linux/vfio.h", "linux/iommufd.h"):
        if not os.path.exists(os.path.join(kdir, h)):
            raise CheckError("%s not found in %s" % (h, kdir))
    clang = find_clang()
    cc = os.environ.get("CC_ABI") or clang
    ours_dir = os.path.abspath(args.ours)
    ours_test_dir = os.path.abspath(args.ours_test)
    workdir = tempfile.mkdtemp(prefix="abi-check.")
    try:
        c = Checker(args, report)
        kflags = ["-I", kdir]
        c.check_abi(
            "uapi",
            Side("uapi", "#include <linux/vfio.h>\n#include <linux/iommufd.h>\n", kflags,
                 [os.path.join(kdir, "linux/vfio.h"), os.path.join(kdir, "linux/iommufd.h")]),
            Side("uapi", '#include "CVFIO.h"\n', ["-I", ours_dir],
                 [os.path.join(ours_dir, "cvfio_vfio.h"), os.path.join(ours_dir, "cvfio_iommufd.h")]),
            clang, cc, workdir)
        if args.test_header:
            th = os.path.abspath(args.test_header)
            if not os.path.exists(th):
                raise CheckError("%s not found" % th)
            c.check_abi(
                "selftest",
                Side("selftest", '#include "%s"\n' % th, kflags, [th]),
                Side("selftest", '#include "CIOMMUFDTest.h"\n', ["-I", ours_test_dir, "-I", ours_dir],
                     [os.path.join(ours_test_dir, "CIOMMUFDTest.h")]),
                clang, cc, workdir)
        else:
            report.say("abi: no iommufd_test.h given: selftest ABI not checked")
    finally:
        if args.keep:
            report.say("abi: generated programs kept in " + workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- self-test

MUTATIONS = [
    # (description, "ours:<dir>/<file>" or "kernel:<path in include dir>" or "kernel:TEST",
    #  old text, new text, expected output fragment, whether the check must fail)
    ("baseline: our headers unchanged",
     "ours:CVFIO/cvfio_vfio.h", "", "",
     " 0 mismatched, 0 missing, 0 not yet bound, 0 extra", False),
    ("struct size: padding field appended to struct iommu_ioas_map",
     "ours:CVFIO/cvfio_iommufd.h",
     "\t__aligned_u64 iova; /* in with FIXED_IOVA, else out */\n};",
     "\t__aligned_u64 iova; /* in with FIXED_IOVA, else out */\n\t__u32 __selftest_pad;\n};",
     "MISMATCH sizeof(struct iommu_ioas_map): ours 48, kernel 40", True),
    ("field offset: num_regions and num_irqs swapped in struct vfio_device_info",
     "ours:CVFIO/cvfio_vfio.h",
     "\t__u32 num_regions;\n\t__u32 num_irqs;\n",
     "\t__u32 num_irqs;\n\t__u32 num_regions;\n",
     "MISMATCH offsetof(struct vfio_device_info, num_regions): ours 12, kernel 8", True),
    ("request number: VFIO_IOMMU_MAP_DMA built from VFIO_BASE + 14",
     "ours:CVFIO/cvfio_vfio.h",
     "VFIO_IOMMU_MAP_DMA = CVFIO_VFIO_IO_(13);",
     "VFIO_IOMMU_MAP_DMA = CVFIO_VFIO_IO_(14);",
     "MISMATCH request VFIO_IOMMU_MAP_DMA: ours 0x3b72, kernel 0x3b71", True),
    ("flag value: VFIO_DMA_MAP_FLAG_WRITE = 1 << 3",
     "ours:CVFIO/cvfio_vfio.h",
     "VFIO_DMA_MAP_FLAG_WRITE = 1u << 1;",
     "VFIO_DMA_MAP_FLAG_WRITE = 1u << 3;",
     "MISMATCH value(VFIO_DMA_MAP_FLAG_WRITE): ours 8", True),
    ("field type: vfio_device_ioeventfd.fd made unsigned",
     "ours:CVFIO/cvfio_vfio.h",
     "\t__s32 fd; /* -1 removes */",
     "\t__u32 fd; /* -1 removes */",
     "MISMATCH type(struct vfio_device_ioeventfd, fd): ours 'unsigned int', kernel 'int'", True),
    ("missing constant: IOMMU_HWPT_ALLOC_PASID removed",
     "ours:CVFIO/cvfio_iommufd.h",
     "\tIOMMU_HWPT_ALLOC_PASID = 1 << 3,\n",
     "",
     "MISSING enum constant IOMMU_HWPT_ALLOC_PASID", True),
    ("constant as macro: VFIO_DEVICE_FLAGS_PCI written as #define",
     "ours:CVFIO/cvfio_vfio.h",
     "static const __u32 VFIO_DEVICE_FLAGS_PCI = 1u << 1;",
     "#define VFIO_DEVICE_FLAGS_PCI (1 << 1)",
     "MISMATCH kind(VFIO_DEVICE_FLAGS_PCI): ours is a macro", True),
    ("constant not const: VFIO_IRQ_INFO_EVENTFD declared without const",
     "ours:CVFIO/cvfio_vfio.h",
     "static const __u32 VFIO_IRQ_INFO_EVENTFD = 1u << 0;",
     "static __u32 VFIO_IRQ_INFO_EVENTFD = 1u << 0;",
     "MISMATCH kind(VFIO_IRQ_INFO_EVENTFD): ours is not const", True),
    ("selftest ABI: IOMMU_TEST_CMD built from IOMMUFD_CMD_BASE + 33",
     "ours:CIOMMUFDTest/CIOMMUFDTest.h",
     "_IO(';', IOMMUFD_CMD_BASE + 32)",
     "_IO(';', IOMMUFD_CMD_BASE + 33)",
     "MISMATCH request IOMMU_TEST_CMD", True),
    ("extension rule: last field of struct iommu_hw_info not bound (must pass)",
     "ours:CVFIO/cvfio_iommufd.h",
     "\t__aligned_u64 out_capabilities; /* enum iommufd_hw_capabilities */\n",
     "",
     "in kernel %(version)s, not yet bound: iommu_hw_info.out_capabilities", False),
    ("kernel grows: a field appended to struct iommu_vdevice_alloc (must pass)",
     "kernel:linux/iommufd.h",
     "\t__aligned_u64 virt_id;\n};",
     "\t__aligned_u64 virt_id;\n\t__u32 selftest_new;\n\t__u32 __selftest_reserved;\n};",
     "in kernel %(version)s, not yet bound: iommu_vdevice_alloc.selftest_new", False),
    ("kernel changes: a field inserted in the middle of struct vfio_irq_info",
     "kernel:linux/vfio.h",
     "\t__u32\tindex;\t\t/* IRQ index */",
     "\t__u32\tselftest_new;\n\t__u32\tindex;\t\t/* IRQ index */",
     "MISSING field struct vfio_irq_info.selftest_new", True),
    ("kernel grows: a new ioctl, struct and enum constant",
     "kernel:linux/iommufd.h",
     "\tIOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,\n};",
     "\tIOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,\n\tIOMMUFD_CMD_SELFTEST_NEW = 0x95,\n};\n"
     "struct iommu_selftest_new { __u32 size; __u32 flags; };\n"
     "#define IOMMU_SELFTEST_NEW _IO(IOMMUFD_TYPE, IOMMUFD_CMD_SELFTEST_NEW)",
     "MISSING request IOMMU_SELFTEST_NEW", True),
    ("kernel grows: a new selftest op",
     "kernel:TEST",
     "\tIOMMU_TEST_OP_DMABUF_REVOKE,\n",
     "\tIOMMU_TEST_OP_DMABUF_REVOKE,\n\tIOMMU_TEST_OP_SELFTEST_NEW,\n",
     "MISSING enum constant IOMMU_TEST_OP_SELFTEST_NEW", True),
]


def overlay_include(kdir, rel, tmp):
    """A copy of the kernel include dir (symlinks) in which `rel` is a real, writable file."""
    out = os.path.join(tmp, "kinclude")
    os.makedirs(out)
    top = rel.split("/")[0]
    for e in os.listdir(kdir):
        if e != top:
            os.symlink(os.path.join(kdir, e), os.path.join(out, e))
    os.makedirs(os.path.join(out, top))
    for e in os.listdir(os.path.join(kdir, top)):
        src = os.path.join(kdir, top, e)
        if e == rel.split("/", 1)[1]:
            shutil.copyfile(src, os.path.join(out, top, e))
        else:
            os.symlink(src, os.path.join(out, top, e))
    return out, os.path.join(out, rel)


def self_test(args):
    kdir = os.path.abspath(args.kernel_include)
    version = kernel_version(kdir)
    ok = True
    for desc, where, old, new, expect, should_fail in MUTATIONS:
        expect = expect % {"version": version}
        side, rel = where.split(":", 1)
        if side == "kernel" and rel == "TEST" and not args.test_header:
            print("self-test: skip  %s (no iommufd_test.h given)" % desc)
            continue
        tmp = tempfile.mkdtemp(prefix="abi-selftest.")
        try:
            ours = os.path.join(tmp, "CVFIO")
            ours_test = os.path.join(tmp, "CIOMMUFDTest")
            shutil.copytree(os.path.abspath(args.ours), ours)
            shutil.copytree(os.path.abspath(args.ours_test), ours_test)
            kinc, testh = kdir, (os.path.abspath(args.test_header) if args.test_header else None)
            if side == "ours":
                path = os.path.join(tmp, rel)
            elif rel == "TEST":
                path = os.path.join(tmp, "iommufd_test.h")
                shutil.copyfile(testh, path)
                testh = path
            else:
                kinc, path = overlay_include(kdir, rel, tmp)
            text = open(path).read()
            if old and text.count(old) != 1:
                print("self-test: FAIL  cannot apply '%s': pattern found %d times in %s" % (desc, text.count(old), where))
                ok = False
                continue
            if old:
                open(path, "w").write(text.replace(old, new))
            cmd = [sys.executable, os.path.abspath(__file__), "--ours", ours, "--ours-test", ours_test, kinc]
            if testh:
                cmd.append(testh)
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            failed = p.returncode != 0
            found = expect in p.stdout
            good = found and failed == should_fail and p.returncode in (0, 1)
            ok = ok and good
            summary = [l for l in p.stdout.splitlines() if l.startswith("abi: ") and "checked" in l]
            print("self-test: %s  %s -> %s (exit %d)%s" % (
                "ok  " if good else "FAIL", desc, "check failed" if failed else "check passed", p.returncode,
                "" if found else "; expected output not found: " + expect))
            if not good or args.verbose:
                for l in p.stdout.splitlines():
                    if l.startswith(("MISMATCH", "MISSING", "EXTRA", "in kernel", "error")):
                        print("    " + l)
                if summary:
                    print("    " + summary[-1])
                if p.returncode not in (0, 1):
                    print("    " + p.stdout[-2000:].replace("\n", "\n    "))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("self-test: %s" % ("passed: the check fails on every breaking mutation and passes on the others"
                             if ok else "FAILED"))
    return 0 if ok else 1


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description="Compare CVFIO/CIOMMUFDTest with the kernel's VFIO/iommufd headers.")
    ap.add_argument("kernel_include", help="kernel uapi include dir (make headers output: has linux/vfio.h)")
    ap.add_argument("test_header", nargs="?", help="the kernel's drivers/iommu/iommufd/iommufd_test.h")
    ap.add_argument("--ours", default=os.path.join(root, "Sources", "CVFIO", "include"))
    ap.add_argument("--ours-test", default=os.path.join(root, "Sources", "CIOMMUFDTest", "include"))
    ap.add_argument("--self-test", action="store_true", help="mutate copies of our headers; each must fail")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the generated C programs")
    args = ap.parse_args()
    try:
        if args.self_test:
            return self_test(args)
        report = Report(kernel_version(os.path.abspath(args.kernel_include)), verbose=args.verbose)
        check(args, report)
        report.summary()
        return 1 if report.failed() else 0
    except CheckError as e:
        print("error: %s" % e)
        print("abi: check could not run")
        return 2


if __name__ == "__main__":
    sys.exit(main())
