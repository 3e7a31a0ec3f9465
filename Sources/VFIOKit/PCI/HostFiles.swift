#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

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
/// are methods on a `PCIHost`.
public struct PCIHost: Sendable {
    /// The directory that stands for `/`.
    public var root: String
    /// Intercepts sysfs writes (tests only); nil writes the files.
    public var sysfsWriter: (any SysfsWriteHandler)?
    /// Where bind remembers each device's original driver (`/run/vfiokit/bindings`).
    public var stateDirectory: String = "/run/vfiokit/bindings"

    /// The real machine.
    public static let system = PCIHost(root: "/")

    public init(root: String = "/", sysfsWriter: (any SysfsWriteHandler)? = nil) {
        self.root = root
        self.sysfsWriter = sysfsWriter
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
        let full = path(p)
        let fd = full.withCString { Glibc.open($0, O_RDONLY | O_CLOEXEC) }
        if fd < 0 { throw VFIOError(operation: "open", errno: Errno(rawValue: Glibc.errno), object: p) }
        defer { _ = Glibc.close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, min($0.count, limit - out.count)) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw VFIOError(operation: "read", errno: Errno(rawValue: Glibc.errno), object: p)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// The last path component of a symlink's target (`driver` -> `vfio-pci`), or nil.
    public func linkName(_ p: String) -> String? {
        guard let t = readLink(p) else { return nil }
        return t.split(separator: "/").last.map(String.init)
    }

    /// The driver a device is bound to (its `driver` link), nil when it has
    /// none (`ENOENT`); throws when the link cannot be read (not a symlink,
    /// permission), so that a caller deciding on safety can fail closed.
    public func driverLink(of a: PCIAddress) throws(VFIOError) -> String? {
        let p = sysfsPath(a) + "/driver"
        var buf = [CChar](repeating: 0, count: 4096)
        let n = path(p).withCString { Glibc.readlink($0, &buf, buf.count - 1) }
        if n < 0 {
            if Glibc.errno == ENOENT { return nil }
            throw VFIOError(operation: "readlink", errno: Errno(rawValue: Glibc.errno), object: p)
        }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/").last.map(String.init)
    }

    /// A symlink's target text, or nil.
    public func readLink(_ p: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = path(p).withCString { Glibc.readlink($0, &buf, buf.count - 1) }
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Names in a directory (no `.`/`..`), sorted; empty when it does not exist.
    public func list(_ p: String) -> [String] {
        guard let d = path(p).withCString({ opendir($0) }) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Whether something exists at `p` (a dangling symlink counts).
    public func exists(_ p: String) -> Bool {
        var st = stat()
        return path(p).withCString { lstat($0, &st) } == 0
    }

    /// Whether `p` is a directory (following symlinks).
    public func isDirectory(_ p: String) -> Bool {
        var st = stat()
        return path(p).withCString { stat($0, &st) } == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Whether `p` is a symlink.
    public func isLink(_ p: String) -> Bool {
        var st = stat()
        return path(p).withCString { lstat($0, &st) } == 0 && (st.st_mode & S_IFMT) == S_IFLNK
    }

    /// File metadata (following symlinks), or nil.
    public func fileStatus(_ p: String) -> FileStatus? {
        var st = stat()
        guard path(p).withCString({ stat($0, &st) }) == 0 else { return nil }
        return FileStatus(mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid,
                          rdevMajor: UInt32(truncatingIfNeeded: ((st.st_rdev >> 8) & 0xfff) | ((st.st_rdev >> 32) & ~0xfff)),
                          rdevMinor: UInt32(truncatingIfNeeded: (st.st_rdev & 0xff) | ((st.st_rdev >> 12) & ~0xff)))
    }

    /// Whether this process may read and write `p` (access(2) with R_OK|W_OK).
    public func canReadWrite(_ p: String) -> Bool {
        path(p).withCString { access($0, R_OK | W_OK) } == 0
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
        let full = path(p)
        let flags = O_WRONLY | O_CLOEXEC | (create ? (O_CREAT | O_TRUNC) : 0)
        let fd = full.withCString { Glibc.open($0, flags, 0o644) }
        if fd < 0 { throw VFIOError(operation: "open", errno: Errno(rawValue: Glibc.errno), object: p) }
        defer { _ = Glibc.close(fd) }
        var bytes = Array(value.utf8)
        if bytes.isEmpty { bytes = [0x0a] }
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n >= 0 { return }
            if Glibc.errno != EINTR {
                throw VFIOError(operation: "write", errno: Errno(rawValue: Glibc.errno), object: p,
                                detail: "writing \"\(value.trimmingWhitespace())\"")
            }
        }
    }

    /// Creates a directory and its parents (mode 0755).
    public func makeDirectories(_ p: String) throws(VFIOError) {
        var cur = ""
        for comp in p.split(separator: "/") {
            cur += "/" + comp
            if isDirectory(cur) { continue }
            if path(cur).withCString({ mkdir($0, 0o755) }) != 0 && Glibc.errno != EEXIST {
                throw VFIOError(operation: "mkdir", errno: Errno(rawValue: Glibc.errno), object: cur)
            }
        }
    }

    /// Removes a file; a missing file is fine.
    public func remove(_ p: String) throws(VFIOError) {
        if path(p).withCString({ unlink($0) }) != 0 && Glibc.errno != ENOENT {
            throw VFIOError(operation: "unlink", errno: Errno(rawValue: Glibc.errno), object: p)
        }
    }
}

/// What stat(2) says about a node, for the doctor's permission checks.
public struct FileStatus: Sendable, Equatable {
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdevMajor: UInt32
    public var rdevMinor: UInt32

    /// `crw-rw----`-style text.
    public var modeString: String {
        let type: Character = switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFCHR): "c"
        case UInt32(S_IFBLK): "b"
        case UInt32(S_IFDIR): "d"
        case UInt32(S_IFLNK): "l"
        default: "-"
        }
        var s = String(type)
        let chars: [Character] = ["r", "w", "x"]
        for i in 0..<9 {
            s.append(mode & (1 << UInt32(8 - i)) != 0 ? chars[i % 3] : "-")
        }
        return s
    }
}
