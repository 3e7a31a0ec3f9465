import Testing
import VFIOKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The error of `m.unmap()`, which must fail (shared by the unit and guest tests).
public func unmapError(_ m: consuming DMAMapping, sourceLocation: SourceLocation = #_sourceLocation) -> VFIOError? {
    do {
        try m.unmap()
        Issue.record("the unmap succeeded", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

extension Guest {
    /// Binds `bdf` to vfio-pci, opens it and binds it to a new iommufd context
    /// for `body` (the context, the device and its device id), and puts the
    /// device back afterwards. Expects the process's fd count to be what it was
    /// before the context was opened once `body`'s objects are gone (waiting
    /// up to 3 s for it to settle when `fdsMaySettle`).
    public static func withDeviceOnIOMMUFD(
        _ bdf: String, fdsMaySettle: Bool = false, sourceLocation: SourceLocation = #_sourceLocation,
        _ body: (IOMMUFD, VFIODevice, UInt32) throws -> Void
    ) throws {
        try withBoundToVFIO(bdf, sourceLocation: sourceLocation) {
            let fdsBefore = openFDCount()
            do {
                let ctx = try IOMMUFD()
                let device = try VFIODevice.open(try PCIAddress(parsing: bdf))
                let devid = try device.bind(to: ctx)
                try body(ctx, device, devid)
            }
            if fdsMaySettle {
                #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice", sourceLocation: sourceLocation)
            } else {
                #expect(openFDCount() == fdsBefore, sourceLocation: sourceLocation)
            }
        }
    }

    /// Binds `bdfs` to vfio-pci, in order, for `body`, and puts each back
    /// afterwards (an expectation that each unbind works), bound or not.
    public static func withBoundToVFIO<R>(
        _ bdfs: String..., sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> R
    ) throws -> R {
        defer {
            for bdf in bdfs {
                #expect(throws: Never.self, "put the device back", sourceLocation: sourceLocation) { try unbind(bdf) }
            }
        }
        for bdf in bdfs { try bindToVFIO(bdf) }
        return try body()
    }
}

/// `posix_spawn` of `path` with `argv` (`argv[0]` included), `actions` and this
/// process's environment, the child starting with no signal blocked as a shell
/// would start it (it inherits the test runner's mask otherwise). Returns
/// posix_spawn's result and the child's pid.
public func spawnWithNoSignalsBlocked(_ path: String, _ argv: [String],
                                      _ actions: inout posix_spawn_file_actions_t) -> (rc: Int32, pid: pid_t) {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
    let cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for a in cargs { free(a) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, cargs, environ)
    return (rc, pid)
}
