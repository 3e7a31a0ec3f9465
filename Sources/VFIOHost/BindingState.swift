import FoundationEssentials
import SystemPackage
import VFIOSystem

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
    /// The device bound.
    public var address: PCIAddress
    /// The driver it had before the bind (nil: none), given back by a restore.
    public var originalDriver: String?
    /// Its `driver_override` before the bind (nil: unset).
    public var originalDriverOverride: String?
    /// The driver the bind gave it (vfio-pci, pci-stub).
    public var boundTo: String

    /// A record of one bind.
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
    let fd: OwnedFD
    /// The directory as the host names it (`/run/vfiokit/bindings`), for messages.
    let name: String
    /// The kernel the directory and its records are used through.
    var kernel: (any SyscallProvider)? { fd.kernel }

    private init(fd: OwnedFD, name: String) {
        self.fd = fd
        self.name = name
    }

    static func modeText(_ mode: UInt32) -> String {
        FileStatus(mode: mode).modeString
    }

    /// Creates the directory (and its parents) when missing, then opens and checks it.
    static func open(_ host: PCIHost, create: Bool) throws(VFIOError) -> BindingStateDirectory? {
        let dir = host.stateDirectory
        if create { try host.makeDirectories(dir) }
        let kernel = host.kernel
        let me = Sys.geteuid(kernel)
        // The parent: a real directory, ours or root's, and nobody else may rename entries in it.
        let parent = dir.split(separator: "/").dropLast().reduce("") { $0 + "/" + $1 }
        if !parent.isEmpty, let st = host.linkStatus(parent) {
            if !st.isDirectory {
                throw unsafe(dir, "its parent \(parent) is not a directory (\(modeText(st.mode)))",
                             remedies: [.removePath(parent, recursive: false), .advice("bind creates it again")])
            }
            if st.uid != me && st.uid != 0 {
                throw unsafe(dir, "its parent \(parent) is owned by uid \(st.uid), not by this process's uid \(me) or root",
                             remedies: [.advice("check who made it; if nothing in it is needed, remove it"),
                                       .removePath(parent, recursive: true), .advice("bind creates it again")])
            }
            if st.mode & 0o022 != 0 && st.mode & 0o1000 == 0 {  // writable by others, no sticky bit
                throw unsafe(dir, "its parent \(parent) is writable by group or others (\(modeText(st.mode)))",
                             remedies: [.removeGroupWrite(path: parent)])
            }
        }
        let raw: Int32
        do throws(VFIOError) {
            raw = try Sys.open(kernel, host.path(dir), O_RDONLY | O_DIRECTORY | O_NOFOLLOW, object: dir)
        } catch {
            if error.errno == .noSuchFileOrDirectory && !create { return nil }
            if error.errno == .tooManySymbolicLinkLevels || error.errno == .notDirectory {
                throw unsafe(dir, "it is a symlink or not a directory", errno: error.errno,
                             remedies: [.removePath(dir, recursive: false), .advice("bind creates the directory again")])
            }
            throw error
        }
        let fd = OwnedFD(raw, label: dir, kernel: kernel)
        let st = try Sys.fstat(kernel, raw, object: dir)
        if st.uid != me {
            throw unsafe(dir, "it is owned by uid \(st.uid), not by this process's uid \(me)",
                         remedies: [.takeOwnership(path: dir, uid: me)])
        }
        if st.mode & 0o022 != 0 {
            throw unsafe(dir, "it is writable by group or others (\(modeText(st.mode)))",
                         remedies: [.restrictMode(path: dir)])
        }
        return BindingStateDirectory(fd: fd, name: dir)
    }

    static func unsafe(_ dir: String, _ why: String, errno: Errno? = nil, remedies: [Remedy]) -> VFIOError {
        VFIOError(operation: .step(.useStateDirectory), errno: errno, object: dir,
                  detail: "refusing to keep binding records in \(dir): \(why); records there could be forged "
                    + "or redirected, and binding runs as root",
                  remedies: remedies)
    }

    /// Runs `body` with the directory's fd number held open.
    private func withDirectory<R>(_ operation: VFIOError.Operation, _ body: (Int32) throws(VFIOError) -> R) throws(VFIOError) -> R {
        try fd.withDescriptor(operation, body)
    }

    /// Opens `file` in the directory without following a symlink (`O_NOFOLLOW`
    /// is added); a symlink there is refused, naming `what` and the file.
    /// The fd belongs to the directory's kernel.
    private func openEntry(_ file: String, _ flags: Int32, mode: UInt32 = 0, what: String) throws(VFIOError) -> OwnedFD {
        let path = name + "/" + file
        do throws(VFIOError) {
            let raw = try withDirectory(.syscall(.open)) { (d) throws(VFIOError) in
                try Sys.openat(kernel, d, file, flags | O_NOFOLLOW, mode: mode, object: path)
            }
            return OwnedFD(raw, label: path, kernel: kernel)
        } catch {
            var e = error
            if error.errno == .tooManySymbolicLinkLevels {
                e.detail = "\(what) is a symlink; VFIOKit follows none in its state directory"
                e.remedies = [.removePath(path, recursive: false)]
            }
            throw e
        }
    }

    /// Takes an exclusive flock on `.lock` (opened without following a symlink);
    /// the lock is held until the returned fd closes.
    func lock() throws(VFIOError) -> OwnedFD {
        let lfd = try openEntry(".lock", O_RDWR | O_CREAT, mode: 0o600, what: "\(name)/.lock")
        try lfd.withDescriptor(.syscall(.flock)) { (l) throws(VFIOError) in try Sys.flock(kernel, l, LOCK_EX, object: lfd.label) }
        return lfd
    }

    func fileName(_ a: PCIAddress) -> String { a.description + ".json" }

    /// The record of `a`, validated; nil when there is none.
    func load(_ a: PCIAddress) throws(VFIOError) -> BindingRecord? {
        let file = fileName(a)
        let path = name + "/" + file
        let rfd: OwnedFD
        do throws(VFIOError) {
            rfd = try openEntry(file, O_RDONLY, what: "the record")
        } catch where error.errno == .noSuchFileOrDirectory {
            return nil
        }
        defer { try? rfd.close() }
        let bytes = try rfd.withDescriptor(.syscall(.read)) { (r) throws(VFIOError) in
            try Sys.readAll(kernel, r, limit: 65536, object: path)
        }
        let fix: [Remedy] = [.advice("if you know the device's original driver, remove the record and bind the driver "
                                     + "yourself"), .removePath(path, recursive: false)]
        guard let record = BindingRecord(json: String(decoding: bytes, as: UTF8.self)) else {
            throw .invalid(.step(.readBindingRecord), "\(path) is not a binding record (a JSON object with address, "
                           + "original_driver, original_driver_override, bound_to)", object: path, remedies: fix)
        }
        if let why = record.problem(for: a) {
            throw .invalid(.step(.readBindingRecord), "\(path) cannot be trusted: \(why)", object: path, remedies: fix)
        }
        return record
    }

    /// Writes the record: a new file with an exclusive, unique name (never
    /// following a symlink), then renamed over the old one.
    func save(_ r: BindingRecord) throws(VFIOError) {
        if let why = r.problem(for: r.address) {
            throw .invalid(.step(.writeBindingRecord), "refusing to record \(r.address): \(why)", object: name)
        }
        let final = fileName(r.address)
        var tmp = ""
        var created: OwnedFD?
        for attempt in 0..<16 {
            tmp = "\(final).\(Sys.getpid(kernel)).\(String(UInt64.random(in: 0...UInt64.max), radix: 16)).tmp"
            do throws(VFIOError) {
                created = try openEntry(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o644, what: "\(name)/\(tmp)")
                break
            } catch where error.errno == .fileExists && attempt < 15 {
                continue
            }
        }
        guard let wfd = created else { return }  // unreachable: the last attempt throws
        var failure: VFIOError?
        do throws(VFIOError) {
            try wfd.withDescriptor(.syscall(.write)) { (w) throws(VFIOError) in
                try Sys.writeAll(kernel, w, Array(r.json.utf8), object: wfd.label)
                try Sys.fsync(kernel, w, object: wfd.label)
            }
        } catch {
            failure = error
        }
        try? wfd.close()
        if failure == nil {
            do throws(VFIOError) {
                try withDirectory(.syscall(.rename)) { (d) throws(VFIOError) in
                    try Sys.renameat(kernel, d, tmp, to: final, object: name + "/" + final)
                }
            } catch {
                failure = error
            }
        }
        if let failure {
            _ = try? withDirectory(.syscall(.unlink)) { (d) throws(VFIOError) in
                try Sys.unlinkat(kernel, d, tmp, object: name + "/" + tmp)
            }
            throw failure
        }
    }

    /// Removes the record of `a`; a missing one is fine.
    func remove(_ a: PCIAddress) throws(VFIOError) {
        let file = fileName(a)
        do throws(VFIOError) {
            try withDirectory(.syscall(.unlink)) { (d) throws(VFIOError) in
                try Sys.unlinkat(kernel, d, file, object: name + "/" + file)
            }
        } catch where error.errno == .noSuchFileOrDirectory {
            return
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
    /// exclusive flock on its `.lock`, so two binding processes never
    /// interleave the steps of a bind or unbind.
    func withBindingLock<R>(_ body: (BindingStateDirectory) throws(VFIOError) -> R) throws(VFIOError) -> R {
        guard let dir = try BindingStateDirectory.open(self, create: true) else {
            throw .invalid(.step(.openStateDirectory), "\(stateDirectory) could not be created", object: stateDirectory)
        }
        let lfd = try dir.lock()
        defer { try? lfd.close() }
        return try body(dir)
    }
}
