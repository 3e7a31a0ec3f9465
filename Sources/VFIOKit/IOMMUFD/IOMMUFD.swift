import CVFIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An iommufd context: one open `/dev/iommu`.
///
/// Every iommufd object (``IOAS``, ``HWPT``, ``FaultQueue``, ``VIOMMU``,
/// ``VDevice``, ``VEventQueue``, ``HWQueue``) lives in one context and keeps
/// it alive; the fd closes when the last of them is gone (or at ``close()``,
/// which destroys every object the kernel still holds for this fd).
///
/// Object ids are never 0: the kernel allocates them from 1, so 0 always means
/// "no object" in its uapi.
public final class IOMMUFD: Sendable {
    /// The `/dev/iommu` descriptor.
    public let fd: OwnedFD

    /// Opens `/dev/iommu`.
    public init() throws(VFIOError) {
        fd = try OwnedFD.open("/dev/iommu")
    }

    /// Takes ownership of an iommufd someone else opened (a VMM that received
    /// it over a socket, a test harness). `label` names it in errors.
    public init(adopting fd: Int32, label: String = "iommufd") {
        self.fd = OwnedFD(fd, label: label)
    }

    /// Closes the context. The kernel destroys every object of this fd.
    /// Objects that still reference the context fail with a "closed" error.
    public func close() throws(VFIOError) { try fd.close() }

    // MARK: ioctl plumbing

    /// Issues an iommufd ioctl on this context's fd.
    @inline(__always)
    func ioctl<A>(_ request: UInt, _ argument: inout A, object: @autoclosure () -> String?) throws(VFIOError) {
        _ = try fd.ioctl(request, &argument, object: object())
    }

    /// Issues `request` with `argument` on this iommufd. For ABIs VFIOKit does
    /// not wrap itself (the kernel's selftest `IOMMU_TEST_CMD`, vendor
    /// experiments): the caller is responsible for the argument's layout and
    /// for every pointer inside it.
    @_spi(Testing)
    public func unsafeIoctl<A>(_ request: UInt, _ argument: inout A, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        try ioctl(request, &argument, object: object())
    }

    /// Destroys object `id` (`IOMMU_DESTROY`). Used by the owners' `destroy()`.
    func destroyObject(_ id: UInt32, label: @autoclosure () -> String) throws(VFIOError) {
        var arg = iommu_destroy.make()
        arg.id = id
        do throws(VFIOError) {
            try ioctl(IOMMU_DESTROY, &arg, object: label())
        } catch {
            var e = error
            if e.errno?.rawValue == EBUSY {
                e.detail = "\(label()) is still in use by another iommufd object or a device (an attached "
                    + "device or mock device, a HWPT or vIOMMU built on it, an access, or a HW queue); the "
                    + "object was not destroyed"
            }
            throw e
        }
    }

    /// Destroys object `id` on behalf of a caller that tracks it by number
    /// (test harnesses, ids handed out by other processes).
    /// The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy(objectID id: UInt32) throws(VFIOError) {
        try destroyObject(id, label: "object \(id)")
    }

    // MARK: options

    /// How pinned pages are charged against `RLIMIT_MEMLOCK`.
    public enum RlimitMode: UInt64, Sendable {
        /// Charged to the user (`user->locked_vm`), the modern accounting (default on /dev/iommu).
        case perUser = 0
        /// Charged to the process (`mm->locked_vm`), as the VFIO type1 container did.
        case perProcess = 1
    }

    /// The accounting mode of this context.
    /// The corresponding ioctl is `IOMMU_OPTION` (`IOMMU_OPTION_RLIMIT_MODE`, `IOMMU_OPTION_OP_GET`).
    public func rlimitMode() throws(VFIOError) -> RlimitMode {
        let v = try option(UInt32(IOMMU_OPTION_RLIMIT_MODE.rawValue), object: 0, op: UInt16(IOMMU_OPTION_OP_GET.rawValue), value: 0)
        return v == 1 ? .perProcess : .perUser
    }

    /// Sets the accounting mode. Needs CAP_SYS_RESOURCE and a context with no
    /// objects yet (EBUSY otherwise).
    /// The corresponding ioctl is `IOMMU_OPTION` (`IOMMU_OPTION_RLIMIT_MODE`, `IOMMU_OPTION_OP_SET`).
    public func setRlimitMode(_ mode: RlimitMode) throws(VFIOError) {
        do throws(VFIOError) {
            _ = try option(UInt32(IOMMU_OPTION_RLIMIT_MODE.rawValue), object: 0, op: UInt16(IOMMU_OPTION_OP_SET.rawValue), value: mode.rawValue)
        } catch {
            var e = error
            if e.errno?.rawValue == EBUSY {
                e.detail = "the accounting mode can only change while the context has no objects"
            } else if e.errno?.rawValue == EPERM {
                e.hint = "changing the accounting mode needs CAP_SYS_RESOURCE"
            }
            throw e
        }
    }

    func option(_ id: UInt32, object: UInt32, op: UInt16, value: UInt64) throws(VFIOError) -> UInt64 {
        var arg = iommu_option.make()
        arg.option_id = id
        arg.op = op
        arg.object_id = object
        arg.val64 = value
        try ioctl(IOMMU_OPTION, &arg, object: object == 0 ? fd.label : "object \(object)")
        return arg.val64
    }

    // MARK: VFIO container compatibility

    /// The IOAS that the VFIO container compatibility layer (/dev/vfio/vfio
    /// provided by iommufd) uses, or nil when none is set.
    /// The corresponding ioctl is `IOMMU_VFIO_IOAS` (`IOMMU_VFIO_IOAS_GET`).
    public func compatibilityIOASID() throws(VFIOError) -> UInt32? {
        var arg = iommu_vfio_ioas.make()
        arg.op = UInt16(IOMMU_VFIO_IOAS_GET.rawValue)
        do throws(VFIOError) {
            try ioctl(IOMMU_VFIO_IOAS, &arg, object: fd.label)
        } catch where error.errno?.rawValue == ENODEV {
            return nil
        }
        return arg.ioas_id
    }

    /// Makes `ioas` the one the VFIO compatibility layer maps into.
    /// The corresponding ioctl is `IOMMU_VFIO_IOAS` (`IOMMU_VFIO_IOAS_SET`).
    public func setCompatibilityIOAS(_ ioas: IOAS) throws(VFIOError) {
        var arg = iommu_vfio_ioas.make()
        arg.op = UInt16(IOMMU_VFIO_IOAS_SET.rawValue)
        arg.ioas_id = ioas.objectID
        try ioctl(IOMMU_VFIO_IOAS, &arg, object: "IOAS \(ioas.objectID)")
    }

    /// Unsets the compatibility IOAS.
    /// The corresponding ioctl is `IOMMU_VFIO_IOAS` (`IOMMU_VFIO_IOAS_CLEAR`).
    public func clearCompatibilityIOAS() throws(VFIOError) {
        var arg = iommu_vfio_ioas.make()
        arg.op = UInt16(IOMMU_VFIO_IOAS_CLEAR.rawValue)
        try ioctl(IOMMU_VFIO_IOAS, &arg, object: fd.label)
    }

    // MARK: process change

    /// Moves the pinned-memory accounting of every IOAS of this context to the
    /// calling process (after a live-update `exec` or a hand-over of the fd).
    /// Only works when every mapping is a file mapping (``IOAS/mapFile(_:at:readable:writable:)``);
    /// user-memory mappings give EINVAL.
    /// The corresponding ioctl is `IOMMU_IOAS_CHANGE_PROCESS`.
    public func changeProcess() throws(VFIOError) {
        var arg = iommu_ioas_change_process.make()
        do throws(VFIOError) {
            try ioctl(IOMMU_IOAS_CHANGE_PROCESS, &arg, object: fd.label)
        } catch {
            var e = error
            if e.errno?.rawValue == EINVAL {
                e.detail = "every mapping must be a file mapping (IOMMU_IOAS_MAP_FILE) to change process"
            }
            throw e
        }
    }
}

/// The id bookkeeping every iommufd object owner shares: destroy once,
/// report errors from `destroy()`, best-effort from deinit.
final class IOMMUObjectState: Sendable {
    private let destroyed = Mutex(false)

    var isDestroyed: Bool { destroyed.withLock { $0 } }

    func destroy(_ ctx: IOMMUFD, _ id: UInt32, label: @autoclosure () -> String) throws(VFIOError) {
        try destroyed.withLock { (d: inout Bool) throws(VFIOError) in
            guard !d else { return }
            if ctx.fd.isClosed { d = true; return }  // the kernel destroyed everything at close
            try ctx.destroyObject(id, label: label())
            d = true
        }
    }

    func destroyQuietly(_ ctx: IOMMUFD, _ id: UInt32) {
        try? destroy(ctx, id, label: "object \(id)")
    }
}
