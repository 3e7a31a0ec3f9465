import SystemPackage
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A stand-in for the kernel's reaction to sysfs writes, for tests on fixture trees.
///
/// When a ``PCIHost`` has one, every write to a file under `/sys` goes to it instead
/// of the file; it may change the fixture tree as the kernel would (remove the
/// `driver` link on unbind, add one on probe) or fail with an errno.
public protocol SysfsWriteHandler: Sendable {
    /// `path` is absolute in the host's view (`/sys/bus/pci/drivers_probe`);
    /// `host.path(path)` is where it lives in the fixture tree.
    func write(_ value: String, to path: String, host: PCIHost) throws(VFIOError)
}

/// The machine's kernel-facing files (sysfs, procfs, /dev, /run) as seen from a root directory.
///
/// Every path VFIOKit's PCI layer reads or writes is absolute in the host's view
/// (`/sys/bus/pci/devices`) and resolved under ``root``: `/` on a real machine,
/// a fixture tree in tests. All discovery, viability, binding and doctor checks
/// are methods on a `PCIHost`. Every file access is a syscall of VFIOSystem's
/// layer, made through the kernel in force when the host value was made (the
/// real one, or a test's fake kernel).
public struct PCIHost: Sendable {
    /// The directory that stands for `/`.
    public var root: String
    /// Intercepts sysfs writes (tests only); nil writes the files.
    public var sysfsWriter: (any SysfsWriteHandler)?
    /// Where bind remembers each device's original driver (`/run/vfiokit/bindings`).
    public var stateDirectory: String = "/run/vfiokit/bindings"

    /// The kernel its files are read and written through, fixed when the value was made.
    package let kernel: (any SyscallProvider)?

    /// The real machine (served by the kernel in force now).
    public static var system: PCIHost { PCIHost(root: "/") }

    /// The machine's files under `root` (`/`: this machine; a fixture tree in tests),
    /// read and written through the kernel in force now. `sysfsWriter` intercepts
    /// sysfs writes (tests only).
    public init(root: String = "/", sysfsWriter: (any SysfsWriteHandler)? = nil) {
        self.root = root
        self.sysfsWriter = sysfsWriter
        kernel = Sys.current
    }

    /// Where host path `p` lives under ``root``.
    public func path(_ p: String) -> String {
        if root == "/" || root.isEmpty { return p }
        return root.hasSuffix("/") ? root + p.dropFirst() : root + p
    }

    // MARK: reading

    /// The file's contents, or nil when it does not exist or cannot be read.
    public func read(_ p: String) -> String? {
        try? readOrThrow(p)
    }

    /// The file's contents with surrounding whitespace removed.
    public func readTrimmed(_ p: String) -> String? { read(p)?.trimmingWhitespace() }

    /// The file's contents; errors name the path and errno.
    public func readOrThrow(_ p: String) throws(VFIOError) -> String {
        let bytes = try readBytes(p, limit: 1 << 20)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Up to `limit` bytes of the file.
    public func readBytes(_ p: String, limit: Int) throws(VFIOError) -> [UInt8] {
        try Sys.readFile(kernel, path(p), limit: limit, object: p)
    }

    /// The file's contents, or nil when it does not exist (ENOENT); other
    /// errors are thrown, for facts that must not be mistaken for "absent".
    public func readIfPresent(_ p: String) throws(VFIOError) -> String? {
        do throws(VFIOError) {
            return try readOrThrow(p)
        } catch where error.errno == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// The last path component of a symlink's target, or nil when there is no
    /// link (ENOENT); other errors are thrown.
    public func linkIfPresent(_ p: String) throws(VFIOError) -> String? {
        do throws(VFIOError) {
            return try Sys.readlink(kernel, path(p), object: p).split(separator: "/").last.map(String.init)
        } catch where error.errno == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// The last path component of a symlink's target (`driver` -> `vfio-pci`),
    /// or nil when there is none or it cannot be read (decisions use
    /// ``linkIfPresent(_:)``, which tells the two apart).
    public func linkName(_ p: String) -> String? {
        guard let t = readLink(p) else { return nil }
        return t.split(separator: "/").last.map(String.init)
    }

    /// The driver a device is bound to (its `driver` link), nil when it has
    /// none (`ENOENT`); throws when the link cannot be read (not a symlink,
    /// permission), so that a caller deciding on safety can fail closed.
    public func driverLink(of a: PCIAddress) throws(VFIOError) -> String? {
        try linkIfPresent(sysfsPath(a) + "/driver")
    }

    /// A symlink's target text, or nil.
    public func readLink(_ p: String) -> String? {
        guard let t = try? Sys.readlink(kernel, path(p), object: p), !t.isEmpty else { return nil }
        return t
    }

    /// Names in a directory (no `.`/`..`), sorted; empty when it does not exist
    /// or cannot be read.
    public func list(_ p: String) -> [String] {
        ((try? Sys.listDirectory(kernel, path(p), object: p)) ?? []).sorted()
    }

    /// Whether something exists at `p` (a dangling symlink counts); false when
    /// it cannot be checked.
    public func exists(_ p: String) -> Bool {
        (try? Sys.lstat(kernel, path(p), object: p)) != nil
    }

    /// Metadata of the node itself (not following a symlink), or nil when
    /// there is nothing at `p` (ENOENT); other errors are thrown, for facts
    /// that must not be mistaken for "absent".
    public func linkStatusIfPresent(_ p: String) throws(VFIOError) -> FileStatus? {
        do throws(VFIOError) {
            return try Sys.lstat(kernel, path(p), object: p)
        } catch where error.errno == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// Whether `p` is a directory (following symlinks); false when it cannot be checked.
    public func isDirectory(_ p: String) -> Bool {
        (try? Sys.stat(kernel, path(p), object: p))?.isDirectory ?? false
    }

    /// Whether `p` is a symlink; false when it cannot be checked.
    public func isLink(_ p: String) -> Bool {
        (try? Sys.lstat(kernel, path(p), object: p))?.isSymlink ?? false
    }

    /// File metadata (following symlinks), or nil when it cannot be read.
    public func fileStatus(_ p: String) -> FileStatus? {
        try? Sys.stat(kernel, path(p), object: p)
    }

    /// File metadata of the node itself (not following a symlink), or nil.
    public func linkStatus(_ p: String) -> FileStatus? {
        try? Sys.lstat(kernel, path(p), object: p)
    }

    /// Whether this process may read and write `p` (access(2) with R_OK|W_OK);
    /// false when access(2) fails for any reason.
    public func canReadWrite(_ p: String) -> Bool {
        (try? Sys.access(kernel, path(p), R_OK | W_OK, object: p)) != nil
    }

    // MARK: writing

    /// Writes `value` to a sysfs or state file, in one write(2) as sysfs requires.
    ///
    /// Errors name the file and the kernel's errno (a sysfs store returns the
    /// driver's error: `EBUSY`, `ENODEV`, `EINVAL`).
    public func write(_ value: String, to p: String) throws(VFIOError) {
        if let w = sysfsWriter, p.hasPrefix("/sys/") {
            try w.write(value, to: p, host: self)
            return
        }
        try writeFile(value, to: p, create: false)
    }

    /// Writes a plain file (used by fixture handlers and the state directory).
    public func writeFile(_ value: String, to p: String, create: Bool) throws(VFIOError) {
        var bytes = Array(value.utf8)
        if bytes.isEmpty { bytes = [0x0a] }
        try Sys.writeFile(kernel, path(p), bytes, create: create, object: p,
                          detail: "writing \"\(value.trimmingWhitespace())\"")
    }

    /// Creates a directory and its parents (mode 0755).
    public func makeDirectories(_ p: String) throws(VFIOError) {
        var cur = ""
        for comp in p.split(separator: "/") {
            cur += "/" + comp
            if isDirectory(cur) { continue }
            do throws(VFIOError) {
                try Sys.mkdir(kernel, path(cur), mode: 0o755, object: cur)
            } catch where error.errno == .fileExists {
                continue
            }
        }
    }

    /// Removes a file; a missing file is fine.
    public func remove(_ p: String) throws(VFIOError) {
        do throws(VFIOError) {
            try Sys.unlink(kernel, path(p), object: p)
        } catch where error.errno == .noSuchFileOrDirectory {
            return
        }
    }
}
