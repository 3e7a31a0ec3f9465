import SystemPackage
import Testing
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

/// Every errno the library can see is printed by its C name and the C
/// library's text, never as `E37 (37, error 37)`.
@Suite struct ErrnoNameTests {
    /// flock's ENOLCK (the fake kernel's failure for flock) was printed as "E37 (37, error 37)".
    @Test func enolckIsNamed() {
        let e = VFIOError(operation: .syscall(.flock), errno: Errno(rawValue: ENOLCK), object: "/run/vfiokit/bindings/.lock")
        #expect(e.summary == "flock on /run/vfiokit/bindings/.lock failed: ENOLCK (37, No locks available)", "\(e.summary)")
    }

    /// Each errno Linux returns to userspace (asm-generic/errno-base.h and
    /// errno.h; aliases such as EWOULDBLOCK by their first name) has the name
    /// and text glibc gives it (`strerrorname_np`, `strerror`).
    @Test func everyUserspaceErrnoHasGlibcsNameAndText() throws {
        // glibc 2.32+; Swift's Glibc module does not declare it (a _GNU_SOURCE function).
        typealias NameFunction = @convention(c) (CInt) -> UnsafePointer<CChar>?
        let symbol = try #require(dlsym(nil /* RTLD_DEFAULT */, "strerrorname_np"))
        let strerrorname_np = unsafeBitCast(symbol, to: NameFunction.self)
        var checked = 0
        for n in CInt(1)...133 {
            guard let cName = strerrorname_np(n) else { continue }
            checked += 1
            let e = Errno(rawValue: n)
            #expect(e.name == String(cString: cName), "errno \(n)")
            #expect(e.message == String(cString: strerror(n)), "errno \(n)")
        }
        #expect(checked >= 130)
        // Newer than this glibc: the kernel's own words.
        #expect(Errno(rawValue: 134).name == "EFTYPE")
    }

    /// The kernel-internal errnos (include/linux/errno.h) that leak to
    /// userspace from some drivers (ENOTSUPP from an ioctl, EPROBE_DEFER) are
    /// named too.
    @Test func kernelInternalErrnosAreNamed() {
        #expect(Errno(rawValue: 524).name == "ENOTSUPP")
        #expect(Errno(rawValue: 517).name == "EPROBE_DEFER")
        for n in CInt(512)...531 where n != 520 {
            #expect(Errno(rawValue: n).name != "E\(n)" && Errno(rawValue: n).message != "error \(n)", "errno \(n)")
        }
    }
}
