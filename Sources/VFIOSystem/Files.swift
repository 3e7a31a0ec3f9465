import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What stat(2) says about a node: its type and permission bits, owner and
/// device number.
public struct FileStatus: Sendable, Equatable {
    /// `st_mode`: the file type and permission bits.
    public var mode: UInt32
    /// `st_uid`: the owner.
    public var uid: UInt32
    /// `st_gid`: the group.
    public var gid: UInt32
    /// The major number of a device node (`major(st_rdev)`).
    public var rdevMajor: UInt32
    /// The minor number of a device node (`minor(st_rdev)`).
    public var rdevMinor: UInt32

    /// A status from its fields (`stat(2)` fills them).
    public init(mode: UInt32 = 0, uid: UInt32 = 0, gid: UInt32 = 0, rdevMajor: UInt32 = 0, rdevMinor: UInt32 = 0) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.rdevMajor = rdevMajor
        self.rdevMinor = rdevMinor
    }

    /// The file type bits (`S_IFMT`).
    public var type: UInt32 { mode & 0o170000 }  // S_IFMT
    /// A directory (`S_ISDIR`).
    public var isDirectory: Bool { type == 0o040000 }  // S_IFDIR
    /// A symbolic link (`S_ISLNK`).
    public var isSymlink: Bool { type == 0o120000 }  // S_IFLNK

    /// `crw-rw----`-style text.
    public var modeString: String {
        let type: Character = switch self.type {
        case 0o020000: "c"
        case 0o060000: "b"
        case 0o040000: "d"
        case 0o120000: "l"
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

// Whole-file and directory helpers over the syscalls above, for sysfs, procfs
// and the binding state directory: each open, read, write, getdents64 and
// close goes through the kernel given.
extension Sys {
    /// Up to `limit` bytes of the file at `path` (open, read until the end, close).
    /// `object` names it in errors.
    package static func readFile(_ kernel: (any SyscallProvider)?, _ path: String, limit: Int = 1 << 20,
                                 object: String? = nil) throws(VFIOError) -> [UInt8]
    {
        let fd = try open(kernel, path, O_RDONLY, object: object ?? path)
        defer { try? close(kernel, fd, object: object ?? path) }
        return try readAll(kernel, fd, limit: limit, object: object ?? path)
    }

    /// Reads `fd` until the end or `limit` bytes.
    package static func readAll(_ kernel: (any SyscallProvider)?, _ fd: Int32, limit: Int, object: String)
        throws(VFIOError) -> [UInt8]
    {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let want = min(chunk.count, limit - out.count)
            let n = try chunk.withUnsafeMutableBytes { b in
                Result { () throws(VFIOError) -> Int in
                    try readBlocking(kernel, fd, UnsafeMutableRawBufferPointer(rebasing: b[0..<want]), object: object)
                }
            }.get()
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// read(2) on a blocking fd (a file): EAGAIN is an error here, not "try later".
    package static func readBlocking(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                                     object: String) throws(VFIOError) -> Int
    {
        try retrying(.read, object: object) { call(kernel) { $0.read(fd, buffer) } }
    }

    /// One write(2) (retried on EINTR); the bytes written.
    package static func writeOnce(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ buffer: UnsafeRawBufferPointer,
                                  object: String) throws(VFIOError) -> Int
    {
        try retrying(.write, object: object) { call(kernel) { $0.write(fd, buffer) } }
    }

    /// Writes all of `bytes` to `fd`; `detail` goes into the error.
    package static func writeAll(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ bytes: [UInt8], object: String,
                                 detail: String? = nil) throws(VFIOError)
    {
        var written = 0
        while written < bytes.count {
            do throws(VFIOError) {
                let n = try bytes[written...].withUnsafeBytes { b in
                    Result { () throws(VFIOError) -> Int in try writeOnce(kernel, fd, b, object: object) }
                }.get()
                written += n
            } catch {
                var e = error
                if let detail { e.detail = detail }
                throw e
            }
        }
    }

    /// Writes `bytes` to the file at `path` in one write(2) (a sysfs store
    /// takes one write), creating or truncating it with `create`.
    package static func writeFile(_ kernel: (any SyscallProvider)?, _ path: String, _ bytes: [UInt8], create: Bool,
                                  object: String? = nil, detail: String? = nil) throws(VFIOError)
    {
        let flags = O_WRONLY | (create ? (O_CREAT | O_TRUNC) : 0)
        let fd = try open(kernel, path, flags, mode: 0o644, object: object ?? path)
        defer { try? close(kernel, fd, object: object ?? path) }
        do throws(VFIOError) {
            _ = try bytes.withUnsafeBytes { b in
                Result { () throws(VFIOError) -> Int in try writeOnce(kernel, fd, b, object: object ?? path) }
            }.get()
        } catch {
            var e = error
            if let detail { e.detail = detail }
            throw e
        }
    }

    /// The names in a directory (no `.` or `..`), unsorted: open with
    /// O_DIRECTORY, getdents64 until the end, close.
    package static func listDirectory(_ kernel: (any SyscallProvider)?, _ path: String, object: String? = nil)
        throws(VFIOError) -> [String]
    {
        let fd = try open(kernel, path, O_RDONLY | O_DIRECTORY, object: object ?? path)
        defer { try? close(kernel, fd, object: object ?? path) }
        return try listDirectory(kernel, fd: fd, object: object ?? path)
    }

    /// The names in the open directory `fd`.
    package static func listDirectory(_ kernel: (any SyscallProvider)?, fd: Int32, object: String)
        throws(VFIOError) -> [String]
    {
        var names: [String] = []
        var buffer = [UInt64](repeating: 0, count: 4096)  // 32 KiB, 8-byte aligned records
        while true {
            let n = try buffer.withUnsafeMutableBytes { b in
                Result { () throws(VFIOError) -> Int in try getdents(kernel, fd, b, object: object) }
            }.get()
            if n == 0 { return names }
            buffer.withUnsafeBytes { raw in
                var offset = 0
                // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name (NUL-terminated).
                while offset + 19 < n {
                    let length = Int(raw.loadUnaligned(fromByteOffset: offset + 16, as: UInt16.self))
                    guard length > 19, offset + length <= n else { break }
                    let nameBytes = raw[(offset + 19)..<(offset + length)]
                    let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                    if name != "." && name != ".." { names.append(name) }
                    offset += length
                }
            }
        }
    }
}
