import CVFIO
import Synchronization
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An iommufd context: one open `/dev/iommu`.
///
/// Every iommufd object (``IOAS``, ``HWPT``, ``FaultQueue``, ``VIOMMU``,
/// ``VDevice``, ``VEventQueue``, ``HWQueue``) lives in one context and keeps
/// it alive; the fd closes when the last of them is gone, or at ``close()``.
///
/// The context may be shared: an fd passed to or inherited from another
/// process (``init(adopting:label:)``, a launcher that hands fds on), a bound device
/// or an open fault queue all hold the kernel's context open after this fd
/// closes, so closing the fd destroys nothing by itself. VFIOKit therefore
/// destroys every object this process allocated explicitly: each owner when it
/// is destroyed or released, and ``close()`` whatever is still alive.
///
/// Object ids are never 0: the kernel allocates them from 1, so 0 always means
/// "no object" in its uapi. A freed id is handed to the next object at once,
/// which is why a destroyed owner refuses every further operation.
public final class IOMMUFD: Sendable {
    /// The `/dev/iommu` descriptor.
    public let fd: OwnedFD
    /// The objects this process allocated here and has not destroyed yet, oldest first.
    private let owned = Mutex<[IOMMUObjectState]>([])

    /// Opens `/dev/iommu`.
    public init() throws(VFIOError) {
        fd = try OwnedFD.open("/dev/iommu")
    }

    /// Takes ownership of an iommufd someone else opened (a VMM that received
    /// it over a socket, a test harness). `label` names it in errors. The
    /// kernel context may be shared with that process: objects allocated
    /// through this owner are destroyed explicitly (see ``close()``), and ids
    /// the other process allocated are never destroyed unless asked
    /// (``IOAS/init(existing:in:)``, ``destroy(objectID:)``).
    public init(adopting fd: Int32, label: String = "iommufd") {
        self.fd = OwnedFD(fd, label: label)
    }

    /// Destroys every object this process allocated in the context and that
    /// is still alive, newest first (an object is always newer than what it is
    /// built on, so the kernel accepts the order), then closes the fd. IOASes
    /// go even with live ``DMAMapping``s: destroying the IOAS unmaps them, and
    /// they become inert. Their owners then report "destroyed".
    ///
    /// When an object cannot be destroyed (EBUSY: a device is still attached
    /// to it, or an object this process did not allocate is built on it), the
    /// fd stays open, so nothing this process made is left behind in a context
    /// another process may share: the error names each object and why; detach
    /// or close what uses it and call `close()` again. A second call after
    /// success does nothing.
    public func close() throws(VFIOError) {
        guard !fd.isClosed else { return }
        let objects = owned.withLock { $0 }
        var failures: [VFIOError] = []
        for state in objects.reversed() {
            do throws(VFIOError) { try state.destroy(self) } catch { failures.append(error) }
        }
        if !failures.isEmpty {
            let list = failures.map { e in
                let why: String = e.errno?.name ?? e.detail ?? e.operation.description
                return (e.object ?? "an object") + ": " + why
            }
            throw VFIOError(
                operation: .syscall(.close), object: fd.label,
                detail: "\(failures.count) object(s) this process allocated could not be destroyed (\(list.joined(separator: "; "))), "
                    + "so the iommufd stays open: closing it would leave them in the kernel's context, which another "
                    + "process or a bound device may hold open",
                remedies: [.advice("detach or close the devices attached to them (VFIODevice.detach() or close()) and destroy what "
                    + "is built on them, then call close() again")])
        }
        try fd.close()
    }

    /// Records an object this process allocated, for ``close()`` and
    /// ``destroy(objectID:)``.
    func track(_ state: IOMMUObjectState) {
        owned.withLock { $0.append(state) }
    }

    /// The state of a live object this process allocated, by id.
    func trackedState(_ id: UInt32) -> IOMMUObjectState? {
        owned.withLock { list in list.last { $0.id == id } }
    }

    /// A last attempt for objects whose owners could not destroy them when
    /// they went (the fd is about to close, and the context may be shared).
    deinit {
        let left = owned.withLock { $0 }
        for state in left.reversed() { state.destroyQuietly(self) }
    }

    /// Forgets an object that was destroyed.
    func forget(_ state: IOMMUObjectState) {
        owned.withLock { list in
            if let i = list.lastIndex(where: { $0 === state }) { list.remove(at: i) }
        }
    }

    // MARK: ioctl plumbing

    /// Issues an iommufd ioctl on this context's fd.
    @inline(__always)
    func ioctl<A>(_ request: Request, _ argument: inout A, object: @autoclosure () -> String?) throws(VFIOError) {
        _ = try fd.ioctl(request, &argument, object: object())
    }

    /// Issues request `number` with `argument` on this iommufd, named
    /// `operation` in errors. For ABIs VFIOKit does not wrap itself (the
    /// kernel's selftest `IOMMU_TEST_CMD`, vendor experiments): the caller is
    /// responsible for the argument's layout and for every pointer inside it.
    package func unsafeIoctl<A>(_ number: UInt, as operation: VFIOError.Operation, _ argument: inout A,
                                object: @autoclosure () -> String? = nil) throws(VFIOError)
    {
        _ = try fd.ioctl(number: number, as: operation, &argument, object: object())
    }

    /// Destroys object `id` (`IOMMU_DESTROY`). Used by the owners' `destroy()`.
    func destroyObject(_ id: UInt32, label: @autoclosure () -> String) throws(VFIOError) {
        var arg = iommu_destroy.make()
        arg.id = id
        do throws(VFIOError) {
            try ioctl(.iommuDestroy, &arg, object: label())
        } catch {
            var e = error
            if e.errno == .resourceBusy {
                e.detail = "\(label()) is still in use by another iommufd object or a device (an attached "
                    + "device or mock device, a HWPT or vIOMMU built on it, an access, or a HW queue); the "
                    + "object was not destroyed"
            }
            throw e
        }
    }

    /// Destroys object `id` on behalf of a caller that tracks it by number
    /// (test harnesses, ids handed out by other processes). When the id is an
    /// object this process allocated, it is destroyed through its owner, which
    /// then reports "destroyed" (an IOAS's mappings become inert). Owners made
    /// with ``IOAS/init(existing:in:)`` of another process's id do not learn of
    /// it: destroy those through the owner.
    /// The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy(objectID id: UInt32) throws(VFIOError) {
        if let state = trackedState(id) {
            try state.destroy(self)
            return
        }
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
            if e.errno == .resourceBusy {
                e.detail = "the accounting mode can only change while the context has no objects"
            } else if e.errno == .notPermitted {
                e.remedies = [.advice("changing the accounting mode needs CAP_SYS_RESOURCE")]
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
        try ioctl(.iommuOption, &arg, object: object == 0 ? fd.label : "object \(object)")
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
            try ioctl(.iommuVFIOIOAS, &arg, object: fd.label)
        } catch where error.errno == .noSuchDevice {
            return nil
        }
        return arg.ioas_id
    }

    /// Makes `ioas` the one the VFIO compatibility layer maps into.
    /// The corresponding ioctl is `IOMMU_VFIO_IOAS` (`IOMMU_VFIO_IOAS_SET`).
    public func setCompatibilityIOAS(_ ioas: IOAS) throws(VFIOError) {
        var arg = iommu_vfio_ioas.make()
        arg.op = UInt16(IOMMU_VFIO_IOAS_SET.rawValue)
        try ioas.state.ioctl(.iommuVFIOIOAS, on: self, &arg, id: \.ioas_id, object: ioas.label)
    }

    /// Unsets the compatibility IOAS.
    /// The corresponding ioctl is `IOMMU_VFIO_IOAS` (`IOMMU_VFIO_IOAS_CLEAR`).
    public func clearCompatibilityIOAS() throws(VFIOError) {
        var arg = iommu_vfio_ioas.make()
        arg.op = UInt16(IOMMU_VFIO_IOAS_CLEAR.rawValue)
        try ioctl(.iommuVFIOIOAS, &arg, object: fd.label)
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
            try ioctl(.iommuIOASChangeProcess, &arg, object: fd.label)
        } catch {
            throw error.explained {
                $0.errno == .invalidArgument ? "every mapping must be a file mapping (IOMMU_IOAS_MAP_FILE) to change process" : nil
            }
        }
    }
}
