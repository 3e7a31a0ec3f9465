import FoundationEssentials
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What bind remembers about a device so unbind --restore can give it back:
/// one JSON file per device in ``PCIHost/stateDirectory`` (`/run/vfiokit/bindings/BDF.json`).
///
/// JSON keys: `address`, `original_driver` (null when the device had none),
/// `original_driver_override` (null when unset), `bound_to`.
public struct BindingRecord: Sendable, Equatable, Codable {
    public var address: PCIAddress
    public var originalDriver: String?
    public var originalDriverOverride: String?
    public var boundTo: String

    public init(address: PCIAddress, originalDriver: String?, originalDriverOverride: String?, boundTo: String) {
        self.address = address
        self.originalDriver = originalDriver
        self.originalDriverOverride = originalDriverOverride
        self.boundTo = boundTo
    }

    enum CodingKeys: String, CodingKey {
        case address
        case originalDriver = "original_driver"
        case originalDriverOverride = "original_driver_override"
        case boundTo = "bound_to"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(address, forKey: .address)
        try c.encode(originalDriver, forKey: .originalDriver)
        try c.encode(originalDriverOverride, forKey: .originalDriverOverride)
        try c.encode(boundTo, forKey: .boundTo)
    }

    /// The file's text: one JSON object, null for absent values.
    var json: String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? enc.encode(self) else { return "{}\n" }
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Parses what ``json`` wrote; nil when it is not such an object.
    init?(json text: String) {
        guard let r = try? JSONDecoder().decode(BindingRecord.self, from: Data(text.utf8)) else { return nil }
        self = r
    }

    /// Why the record cannot be trusted, or nil when every name in it is a
    /// plain driver name and the address is the file's. Names are written into
    /// sysfs paths (`/sys/bus/pci/drivers/NAME/bind`) and files, so a name with
    /// `/` or one that is `.` or `..` is refused before anything is written.
    func problem(for file: PCIAddress) -> String? {
        if address != file { return "its address \(address) is not the file's (\(file))" }
        if let d = originalDriver, let why = DriverName.problem(d) { return "original_driver \"\(d)\" \(why)" }
        if let o = originalDriverOverride, let why = DriverName.problem(o) { return "original_driver_override \"\(o)\" \(why)" }
        if let why = DriverName.problem(boundTo) { return "bound_to \"\(boundTo)\" \(why)" }
        return nil
    }
}

/// Kernel driver names as VFIOKit accepts them before using one in a sysfs path.
enum DriverName {
    /// Why `name` is not a safe driver name, or nil. Driver names are short
    /// words (`nvme`, `vfio-pci`, `snd_hda_intel`): no `/`, no whitespace or
    /// control characters, not `.` or `..`.
    static func problem(_ name: String) -> String? {
        if name.isEmpty { return "is empty" }
        if name.utf8.count > 255 { return "is longer than any driver name" }
        if name == "." || name == ".." { return "is not a driver name" }
        for u in name.unicodeScalars where u == "/" || u.value <= 0x20 || u.value == 0x7f {
            return "is not a driver name (it contains \(u == "/" ? "'/'" : "a space or control character"))"
        }
        return nil
    }
}

/// The state directory, opened without following symlinks and checked: owned
/// by this process's user and writable by nobody else, as is its parent.
/// Every record operation goes through its fd (`openat`, `renameat`, `unlinkat`),
/// so a path swapped after the check is never used.
final class BindingStateDirectory {
    let fd: Int32
    /// The directory as the host names it (`/run/vfiokit/bindings`), for messages.
    let name: String

    private init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }

    deinit { _ = Glibc.close(fd) }

    static func modeText(_ mode: mode_t) -> String {
        FileStatus(mode: UInt32(mode), uid: 0, gid: 0, rdevMajor: 0, rdevMinor: 0).modeString
    }

    /// Creates the directory (and its parents) when missing, then opens and checks it.
    static func open(_ host: PCIHost, create: Bool) throws(VFIOError) -> BindingStateDirectory? {
        let dir = host.stateDirectory
        if create { try host.makeDirectories(dir) }
        let me = geteuid()
        // The parent: a real directory, ours or root's, and nobody else may rename entries in it.
        let parent = dir.split(separator: "/").dropLast().reduce("") { $0 + "/" + $1 }
        if !parent.isEmpty {
            var st = stat()
            if host.path(parent).withCString({ lstat($0, &st) }) == 0 {
                if (st.st_mode & S_IFMT) != S_IFDIR {
                    throw unsafe(dir, "its parent \(parent) is not a directory (\(modeText(st.st_mode)))",
                                 fix: "`rm \(parent)`; bind creates it again")
                }
                if st.st_uid != me && st.st_uid != 0 {
                    throw unsafe(dir, "its parent \(parent) is owned by uid \(st.st_uid), not by this process's uid \(me) or root",
                                 fix: "check who made it; if nothing in it is needed: `rm -r \(parent)` (bind creates it again)")
                }
                if st.st_mode & 0o022 != 0 && st.st_mode & S_ISVTX == 0 {
                    throw unsafe(dir, "its parent \(parent) is writable by group or others (\(modeText(st.st_mode)))",
                                 fix: "`chmod go-w \(parent)`")
                }
            }
        }
        let fd = host.path(dir).withCString { Glibc.open($0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        if fd < 0 {
            let e = Glibc.errno
            if e == ENOENT && !create { return nil }
            if e == ELOOP || e == ENOTDIR {
                throw unsafe(dir, "it is a symlink or not a directory", errno: Errno(rawValue: e),
                             fix: "`rm \(dir)`; bind creates the directory again")
            }
            throw VFIOError(operation: "open", errno: Errno(rawValue: e), object: dir)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = Glibc.errno
            _ = Glibc.close(fd)
            throw VFIOError(operation: "fstat", errno: Errno(rawValue: e), object: dir)
        }
        if st.st_uid != me {
            _ = Glibc.close(fd)
            throw unsafe(dir, "it is owned by uid \(st.st_uid), not by this process's uid \(me)",
                         fix: "check who made it and its records; if they are yours: `chown \(me) \(dir) && chmod 0755 \(dir)`")
        }
        if st.st_mode & 0o022 != 0 {
            _ = Glibc.close(fd)
            throw unsafe(dir, "it is writable by group or others (\(modeText(st.st_mode)))",
                         fix: "check its records, then `chmod 0755 \(dir)`")
        }
        return BindingStateDirectory(fd: fd, name: dir)
    }

    static func unsafe(_ dir: String, _ why: String, errno: Errno? = nil, fix: String) -> VFIOError {
        VFIOError(operation: "use state directory", errno: errno, object: dir,
                  detail: "refusing to keep binding records in \(dir): \(why); records there could be forged "
                    + "or redirected, and vfioctl runs as root",
                  hint: fix)
    }

    /// Takes an exclusive flock on `.lock` (opened without following a symlink).
    func lock() throws(VFIOError) -> Int32 {
        let lfd = ".lock".withCString { openat(fd, $0, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        if lfd < 0 {
            let e = Glibc.errno
            throw VFIOError(operation: "open", errno: Errno(rawValue: e), object: name + "/.lock",
                            detail: e == ELOOP ? "\(name)/.lock is a symlink; vfioctl follows none in its state directory" : nil,
                            hint: e == ELOOP ? "`rm \(name)/.lock`" : nil)
        }
        while flock(lfd, LOCK_EX) != 0 {
            let e = Glibc.errno
            if e != EINTR {
                _ = Glibc.close(lfd)
                throw VFIOError(operation: "flock", errno: Errno(rawValue: e), object: name + "/.lock")
            }
        }
        return lfd
    }

    func fileName(_ a: PCIAddress) -> String { a.description + ".json" }

    /// The record of `a`, validated; nil when there is none.
    func load(_ a: PCIAddress) throws(VFIOError) -> BindingRecord? {
        let file = fileName(a)
        let rfd = file.withCString { openat(fd, $0, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        if rfd < 0 {
            let e = Glibc.errno
            if e == ENOENT { return nil }
            throw VFIOError(operation: "open", errno: Errno(rawValue: e), object: name + "/" + file,
                            detail: e == ELOOP ? "the record is a symlink; vfioctl follows none in its state directory" : nil,
                            hint: e == ELOOP ? "`rm \(name)/\(file)`" : nil)
        }
        defer { _ = Glibc.close(rfd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 65536 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(rfd, $0.baseAddress, $0.count) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw VFIOError(operation: "read", errno: Errno(rawValue: Glibc.errno), object: name + "/" + file)
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        let path = name + "/" + file
        let fix = "if you know the device's original driver, remove the record (`rm \(path)`) and bind the driver yourself"
        guard let record = BindingRecord(json: String(decoding: bytes, as: UTF8.self)) else {
            throw .invalid("read binding record", "\(path) is not a binding record (a JSON object with address, "
                           + "original_driver, original_driver_override, bound_to)", object: path, hint: fix)
        }
        if let why = record.problem(for: a) {
            throw .invalid("read binding record", "\(path) cannot be trusted: \(why)", object: path, hint: fix)
        }
        return record
    }

    /// Writes the record: a new file with an exclusive, unique name (never
    /// following a symlink), then renamed over the old one.
    func save(_ r: BindingRecord) throws(VFIOError) {
        if let why = r.problem(for: r.address) {
            throw .invalid("write binding record", "refusing to record \(r.address): \(why)", object: name)
        }
        let final = fileName(r.address)
        var tmp = ""
        var wfd: Int32 = -1
        for _ in 0..<16 {
            tmp = "\(final).\(getpid()).\(String(UInt64.random(in: 0...UInt64.max), radix: 16)).tmp"
            wfd = tmp.withCString { openat(fd, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644) }
            if wfd >= 0 || Glibc.errno != EEXIST { break }
        }
        if wfd < 0 { throw VFIOError(operation: "open", errno: Errno(rawValue: Glibc.errno), object: name + "/" + tmp) }
        let bytes = Array(r.json.utf8)
        var written = 0
        var failure: VFIOError?
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { Glibc.write(wfd, $0.baseAddress, $0.count) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                failure = VFIOError(operation: "write", errno: Errno(rawValue: Glibc.errno), object: name + "/" + tmp)
                break
            }
            written += n
        }
        if failure == nil && fsync(wfd) != 0 {
            failure = VFIOError(operation: "fsync", errno: Errno(rawValue: Glibc.errno), object: name + "/" + tmp)
        }
        _ = Glibc.close(wfd)
        if failure == nil && tmp.withCString({ t in final.withCString { renameat(fd, t, fd, $0) } }) != 0 {
            failure = VFIOError(operation: "rename", errno: Errno(rawValue: Glibc.errno), object: name + "/" + final)
        }
        if let failure {
            _ = tmp.withCString { unlinkat(fd, $0, 0) }
            throw failure
        }
    }

    /// Removes the record of `a`; a missing one is fine.
    func remove(_ a: PCIAddress) throws(VFIOError) {
        let file = fileName(a)
        if file.withCString({ unlinkat(fd, $0, 0) }) != 0 && Glibc.errno != ENOENT {
            throw VFIOError(operation: "unlink", errno: Errno(rawValue: Glibc.errno), object: name + "/" + file)
        }
    }

    /// Puts the record back as it was before a change: `previous`, or none.
    func restore(_ a: PCIAddress, to previous: BindingRecord?) throws(VFIOError) {
        if let previous { try save(previous) } else { try remove(a) }
    }
}

extension PCIHost {
    /// The remembered original driver of a device, if bind recorded one and the
    /// record can be trusted (see ``loadBindingRecord(_:)`` for the errors).
    public func bindingRecord(_ a: PCIAddress) -> BindingRecord? {
        (try? loadBindingRecord(a)) ?? nil
    }

    /// The record bind wrote for `a`, or nil when there is none. Throws when the
    /// state directory is not safe (a symlink, owned by another user, writable
    /// by others) or the record is not valid (see ``BindingRecord``).
    public func loadBindingRecord(_ a: PCIAddress) throws(VFIOError) -> BindingRecord? {
        guard let dir = try BindingStateDirectory.open(self, create: false) else { return nil }
        return try dir.load(a)
    }

    /// Runs `body` with the state directory open and checked, holding an
    /// exclusive flock on its `.lock`, so two vfioctl processes never
    /// interleave the steps of a bind or unbind.
    func withBindingLock<R>(_ body: (BindingStateDirectory) throws(VFIOError) -> R) throws(VFIOError) -> R {
        guard let dir = try BindingStateDirectory.open(self, create: true) else {
            throw .invalid("open state directory", "\(stateDirectory) could not be created", object: stateDirectory)
        }
        let lfd = try dir.lock()
        defer { _ = Glibc.close(lfd) }
        return try body(dir)
    }
}
