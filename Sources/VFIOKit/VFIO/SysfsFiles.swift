#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The few sysfs reads the VFIO layer needs (finding a cdev or a group from a
/// BDF, naming the drivers of a group's members). Plain libc: these are not
/// device syscalls, so they bypass the fake-kernel seam; unit tests pass paths.
enum SysfsFiles {
    /// The names in a directory, sorted; empty when it does not exist.
    static func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// The last path component of a symlink's target, or nil.
    static func linkTargetName(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.map(String.init)
    }

    /// A small text file's contents without the trailing newline, or nil.
    static func read(_ path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = Glibc.read(fd, &buf, buf.count)
        guard n >= 0 else { return nil }
        var s = String(decoding: buf[0..<n], as: UTF8.self)
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
}
