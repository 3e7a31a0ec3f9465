import CVFIO
import FoundationEssentials
import Synchronization
import VFIOSystem

/// A VFIO device fd: a PCI function bound to vfio-pci, opened either as a cdev
/// (`/dev/vfio/devices/vfioN`, then bound to an ``IOMMUFD``) or through its
/// group (``VFIOGroup/device(_:vfToken:)``, with a ``VFIOContainer``).
///
/// Ownership follows the kernel's teardown order: a cdev device keeps the
/// ``IOMMUFD`` it is bound to and the ``IOMMUAttachTarget`` it is attached to
/// alive; a group device keeps its ``VFIOGroup`` (and so its container) alive.
/// ``close()`` closes the device fd first, then lets go of those.
public final class VFIODevice: Sendable {
    /// How the device was opened.
    public enum Path: Sendable, Equatable {
        /// `/dev/vfio/devices/vfioN`.
        case cdev(String)
        /// Through a group fd, by this device name (the BDF).
        case group(String)
    }

    /// The device fd. Declared first: it closes before the parents below are released.
    public let fd: OwnedFD
    /// How the device was opened: its cdev path, or its name in its group.
    public let path: Path
    /// The group the device was opened through (group path only).
    public let group: VFIOGroup?

    struct Binding {
        var iommufd: IOMMUFD?
        var devid: UInt32?
        var attached: (any IOMMUAttachTarget)?
        var attachedID: UInt32?
        var pasids: [UInt32: any IOMMUAttachTarget] = [:]
        /// Eventfds routed to interrupts, by IRQ index: kept alive while assigned.
        var irqEventFDs: [UInt32: [EventFD?]] = [:]
    }
    let binding = Mutex(Binding())
    /// What revoked the dma-bufs of its BARs, and its mapped regions (see ``BARDMABuf``).
    let exports = Mutex(ExportRecord())

    package init(fd: OwnedFD, path: Path, group: VFIOGroup?) {
        self.fd = fd
        self.path = path
        self.group = group
    }

    /// A short name for errors: the cdev path or the BDF.
    public var label: String {
        switch path {
        case .cdev(let p): return p
        case .group(let name): return name
        }
    }

    // MARK: opening (cdev path)

    /// Opens a VFIO cdev (`/dev/vfio/devices/vfioN`). The device can do nothing
    /// until it is bound to an iommufd with ``bind(to:token:)``.
    public static func open(cdev path: String) throws(VFIOError) -> VFIODevice {
        VFIODevice(fd: try OwnedFD.open(path), path: .cdev(path), group: nil)
    }

    /// Takes ownership of a VFIO cdev fd someone else opened (a parent that
    /// passed it already bound, as a launcher of a VMM does). When the fd is
    /// already bound, give the ``IOMMUFD`` it is bound to and the device id
    /// the bind returned; the device then keeps that context alive and can be
    /// attached at once. Unbound (nil), bind it with ``bind(to:token:)``.
    /// `path` names the device in errors (the cdev path or the BDF).
    public convenience init(adoptingCdev fd: Int32, path: String, boundTo iommufd: IOMMUFD? = nil,
                            deviceID: UInt32? = nil) {
        self.init(fd: OwnedFD(fd, label: path), path: .cdev(path), group: nil)
        if let iommufd {
            binding.withLock {
                $0.iommufd = iommufd
                $0.devid = deviceID
            }
        }
    }

    // MARK: iommufd binding (cdev path)

    /// Binds the device to an iommufd context; returns the device id iommufd
    /// gave it (`out_devid`, used by hot reset, HWPT allocation, vDEVICEs).
    /// `token` is the VF token (a UUID shared between a PF driver and the VF's user).
    /// The corresponding ioctl is `VFIO_DEVICE_BIND_IOMMUFD`.
    @discardableResult
    public func bind(to iommufd: IOMMUFD, token: UUID? = nil) throws(VFIOError) -> UInt32 {
        guard case .cdev = path else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceBindIOMMUFD), "a device opened through its group uses the group's container",
                                    object: label, remedies: [.advice("open the device as a cdev (VFIODevice.open(cdev:)) to use iommufd")])
        }
        if binding.withLock({ $0.iommufd != nil }) {
            throw VFIOError.invalid(.ioctl(.vfioDeviceBindIOMMUFD), "the device is already bound to an iommufd", object: label,
                                    remedies: [.advice("a device fd binds once; close it and open the cdev again to bind elsewhere")])
        }
        var arg = vfio_device_bind_iommufd.make()
        var uuid = token?.uuid ?? (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        // The iommufd's number is in the argument: hold it open for the call.
        try iommufd.fd.withDescriptor(.ioctl(.vfioDeviceBindIOMMUFD)) { (ctx) throws(VFIOError) in
            try withUnsafeMutableBytes(of: &uuid) { (raw) throws(VFIOError) in
                arg.iommufd = ctx
                if token != nil {
                    arg.flags |= VFIO_DEVICE_BIND_FLAG_TOKEN
                    arg.token_uuid_ptr = UInt64(UInt(bitPattern: raw.baseAddress))
                }
                // Who holds the group (EPERM, EINVAL, EBUSY) is for callers that know the BDF:
                // PCIHost.explainOwnership(_:device:) (VFIOKit's openers, the CLI).
                _ = try fd.ioctl(.vfioDeviceBindIOMMUFD, &arg, object: label)
            }
        }
        let devid = arg.out_devid
        binding.withLock {
            $0.iommufd = iommufd
            $0.devid = devid
        }
        return devid
    }

    /// The iommufd device id, once bound.
    public var deviceID: UInt32? { binding.withLock { $0.devid } }

    /// The iommufd context the device is bound to.
    public var boundIOMMUFD: IOMMUFD? { binding.withLock { $0.iommufd } }

    /// What the device is attached to (its whole-device translation), if anything.
    public var attachedTarget: (any IOMMUAttachTarget)? { binding.withLock { $0.attached } }

    /// Attaches the device to an IOAS or HWPT in the context it is bound to;
    /// attaching while attached replaces the translation atomically. Returns the
    /// id the kernel reports: for an IOAS, the HWPT it picked or made.
    /// The corresponding ioctl is `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
    @discardableResult
    public func attach(to target: any IOMMUAttachTarget) throws(VFIOError) -> UInt32 {
        try requireBound(to: target, .ioctl(.vfioDeviceAttachIOMMUFDPT))
        var arg = vfio_device_attach_iommufd_pt.make()
        // The id only while the object exists (a destroyed IOAS/HWPT's id may name another object).
        try IOMMUObjects.withID(of: target, fallback: target.objectID, .ioctl(.vfioDeviceAttachIOMMUFDPT)) { (id) throws(VFIOError) in
            arg.pt_id = id
            _ = try fd.ioctl(.vfioDeviceAttachIOMMUFDPT, &arg, object: "\(label) -> object \(id)")
        }
        let pt = arg.pt_id
        binding.withLock {
            $0.attached = target
            $0.attachedID = pt
        }
        return pt
    }

    /// Attaches one PASID of the device to `target` (replaces an earlier PASID
    /// attachment). The corresponding ioctl is `VFIO_DEVICE_ATTACH_IOMMUFD_PT`
    /// with `VFIO_DEVICE_ATTACH_PASID`.
    @discardableResult
    public func attach(to target: any IOMMUAttachTarget, pasid: UInt32) throws(VFIOError) -> UInt32 {
        try requireBound(to: target, .ioctl(.vfioDeviceAttachIOMMUFDPT))
        var arg = vfio_device_attach_iommufd_pt.make()
        arg.flags = VFIO_DEVICE_ATTACH_PASID
        arg.pasid = pasid
        try IOMMUObjects.withID(of: target, fallback: target.objectID, .ioctl(.vfioDeviceAttachIOMMUFDPT)) { (id) throws(VFIOError) in
            arg.pt_id = id
            _ = try fd.ioctl(.vfioDeviceAttachIOMMUFDPT, &arg, object: "\(label) pasid \(pasid) -> object \(id)")
        }
        binding.withLock { $0.pasids[pasid] = target }
        return arg.pt_id
    }

    /// Detaches the device from its translation (DMA is then blocked).
    /// The corresponding ioctl is `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    public func detach() throws(VFIOError) {
        var arg = vfio_device_detach_iommufd_pt.make()
        _ = try fd.ioctl(.vfioDeviceDetachIOMMUFDPT, &arg, object: label)
        binding.withLock {
            $0.attached = nil
            $0.attachedID = nil
        }
    }

    /// Detaches one PASID. The corresponding ioctl is
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` with `VFIO_DEVICE_DETACH_PASID`.
    public func detach(pasid: UInt32) throws(VFIOError) {
        var arg = vfio_device_detach_iommufd_pt.make()
        arg.flags = VFIO_DEVICE_DETACH_PASID
        arg.pasid = pasid
        _ = try fd.ioctl(.vfioDeviceDetachIOMMUFDPT, &arg,
                          object: "\(label) pasid \(pasid)")
        _ = binding.withLock { $0.pasids.removeValue(forKey: pasid) }
    }

    /// vfio_main.c answers every request on a cdev fd but the bind with EINVAL
    /// until the bind: says so when this cdev is not bound.
    func explainUnbound(_ error: VFIOError) -> VFIOError {
        guard error.errno == .invalidArgument, case .cdev = path, binding.withLock({ $0.iommufd == nil }) else { return error }
        var e = error
        e.detail = "the cdev is not bound to an iommufd: a VFIO cdev answers no request before VFIO_DEVICE_BIND_IOMMUFD"
        e.remedies = [.advice("bind the device first: bind(to:) an IOMMUFD")]
        return e
    }

    private func requireBound(to target: any IOMMUAttachTarget, _ op: VFIOError.Operation) throws(VFIOError) {
        guard let ctx = binding.withLock({ $0.iommufd }) else {
            throw VFIOError.invalid(op, "the device is not bound to an iommufd", object: label,
                                    remedies: [.advice("call bind(to:) first")])
        }
        guard ctx === target.iommufd else {
            throw VFIOError.invalid(op, "object \(target.objectID) belongs to another iommufd context than the device's",
                                    object: label, remedies: [.advice("allocate the IOAS/HWPT in the context the device is bound to")])
        }
    }

    // MARK: closing

    /// Whether ``close()`` has run.
    public var isClosed: Bool { fd.isClosed }

    /// Closes the device fd (the kernel unbinds and detaches it), then releases
    /// the iommufd objects it held. Idempotent. A mapped ``MMIORegion`` holds
    /// its own reference to the kernel's file: the device is really released
    /// (and its group can leave its container) once those are gone too.
    public func close() throws(VFIOError) {
        let wasOpen = !fd.isClosed
        defer {
            binding.withLock { $0 = Binding() }
            if wasOpen { noteClosed() }  // the kernel revokes the device's dma-bufs at its release
        }
        try fd.close()
    }

    deinit {
        try? fd.close()
    }
}
