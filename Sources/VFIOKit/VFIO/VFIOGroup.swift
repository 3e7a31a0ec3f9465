import CVFIO
import FoundationEssentials
import Synchronization
import SystemPackage

/// A VFIO group (`/dev/vfio/N`): the unit of isolation of the legacy VFIO
/// API. It joins a ``VFIOContainer`` and hands out device fds.
///
/// The group keeps its container alive once set; devices opened through it
/// keep the group alive. So a device fd always closes before its group, and a
/// group before its container.
public final class VFIOGroup: Sendable {
    /// The group fd. Declared first: it closes before the container is released.
    public let fd: OwnedFD
    /// The IOMMU group number.
    public let number: Int
    private let containerBox = Mutex<VFIOContainer?>(nil)

    /// The IOMMU group number of a PCI device.
    public static func groupNumber(of bdf: String, host: PCIHost = PCIHost()) throws(VFIOError) -> Int {
        try groupNumber(of: try PCIAddress(parsing: bdf), host: host)
    }

    /// The IOMMU group number of a PCI device.
    public static func groupNumber(of address: PCIAddress, host: PCIHost = PCIHost()) throws(VFIOError) -> Int {
        guard let n = try host.device(address).iommuGroup else { throw host.noGroupError(address) }
        return n
    }

    static func blockedError(_ op: String, _ v: GroupViability, _ blocking: [GroupViability.Member], errno: Errno? = nil) -> VFIOError {
        let names = blocking.map { m in
            m.status == .unbound ? "\(m.address) (no driver; VFIOKit wants every endpoint on vfio-pci)" : m.blockingText
        }.joined(separator: ", ")
        let hint: String
        if let bad = blocking.first(where: { $0.status == .unreadable }) {
            hint = "find out why \(bad.address) cannot be read (`ls -l /sys/bus/pci/devices/\(bad.address)/`); "
                + "VFIOKit does not use a group it cannot check"
        } else {
            let first = v.members.first { !$0.isBridge }?.address ?? v.members[0].address
            var cmds = v.fixCommands(for: first, requireVFIO: true)
            if cmds.isEmpty { cmds = ["vfioctl bind \(first) --group"] }
            hint = "run " + cmds.map { "`\($0)`" }.joined(separator: ", then ")
                + " (every endpoint of a group on vfio-pci; a bridge on pci-stub or a driver that manages DMA)"
        }
        return VFIOError(operation: op, errno: errno, object: "/dev/vfio/\(v.group)",
                         detail: "IOMMU group \(v.group) is not usable: \(names)", hint: hint)
    }

    /// Opens `/dev/vfio/N` and checks that the group is viable. With
    /// `requireAllMembersBound` (the default) VFIOKit also refuses a group
    /// with a member not bound to vfio-pci (bridges excepted), naming it.
    public init(number: Int, requireAllMembersBound: Bool = true, host: PCIHost = PCIHost()) throws(VFIOError) {
        let path = "/dev/vfio/\(number)"
        do {
            fd = try OwnedFD.open(path)
        } catch {
            // No node yet: say which members keep the group from VFIO.
            if error.errno?.rawValue == 2, let v = try? host.viability(ofGroup: number),
               case let blocking = v.blockers(requireVFIO: true), !blocking.isEmpty {
                throw VFIOGroup.blockedError("open", v, blocking, errno: error.errno)
            }
            // EBUSY: held by another process or through a member's cdev: say by whom.
            throw host.explainOwnership(error, device: nil, group: number)
        }
        self.number = number
        let s = try status()
        // The kernel's flag decides; sysfs names the members and adds VFIOKit's
        // stricter every-member-on-vfio-pci rule. A group whose members cannot
        // be read is refused under that rule (fail closed).
        let v: GroupViability?
        do throws(VFIOError) {
            v = try host.viability(ofGroup: number)
        } catch {
            if requireAllMembersBound {
                var e = error
                e.detail = (e.detail.map { $0 + "; " } ?? "") + "VFIOKit cannot check the members of IOMMU group \(number), so it does not use it"
                throw e
            }
            v = nil
        }
        if !s.viable {
            guard let v else {
                throw VFIOError.invalid("VFIO_GROUP_GET_STATUS", "IOMMU group \(number) is not viable", object: label,
                                        hint: "bind every member of the group to vfio-pci (`vfioctl list --groups`)")
            }
            throw VFIOGroup.blockedError("VFIO_GROUP_GET_STATUS", v, v.blockers(requireVFIO: false))
        }
        if requireAllMembersBound, let v, case let blocking = v.blockers(requireVFIO: true), !blocking.isEmpty {
            throw VFIOGroup.blockedError("open group", v, blocking)
        }
    }

    /// Opens the group of a PCI device.
    public convenience init(bdf: String, requireAllMembersBound: Bool = true) throws(VFIOError) {
        try self.init(number: try VFIOGroup.groupNumber(of: bdf), requireAllMembersBound: requireAllMembersBound)
    }

    var label: String { "/dev/vfio/\(number)" }

    public struct Status: Sendable, Equatable {
        /// No device of the group is used by a kernel driver that does DMA.
        public var viable: Bool
        public var containerSet: Bool
    }

    /// The corresponding ioctl is `VFIO_GROUP_GET_STATUS`.
    public func status() throws(VFIOError) -> Status {
        var arg = vfio_group_status.make()
        _ = try fd.ioctl(VFIO_GROUP_GET_STATUS, &arg, object: label)
        return Status(viable: arg.flags & VFIO_GROUP_FLAGS_VIABLE != 0,
                      containerSet: arg.flags & VFIO_GROUP_FLAGS_CONTAINER_SET != 0)
    }

    /// The container the group is in.
    public var container: VFIOContainer? { containerBox.withLock { $0 } }

    /// Adds the group to a container (which it then keeps alive). The
    /// corresponding ioctl is `VFIO_GROUP_SET_CONTAINER`.
    public func setContainer(_ container: VFIOContainer) throws(VFIOError) {
        // The container's number is the argument: hold it open for the call.
        try container.fd.withDescriptor("VFIO_GROUP_SET_CONTAINER") { (number) throws(VFIOError) in
            var cfd = number
            _ = try fd.ioctl(VFIO_GROUP_SET_CONTAINER, &cfd, object: "\(label) -> \(container.label)")
        }
        containerBox.withLock { $0 = container }
    }

    /// Removes the group from its container (every device fd of the group must
    /// be closed). The corresponding ioctl is `VFIO_GROUP_UNSET_CONTAINER`.
    public func unsetContainer() throws(VFIOError) {
        _ = try fd.ioctl(VFIO_GROUP_UNSET_CONTAINER, nil, object: label)
        containerBox.withLock { $0 = nil }
    }

    /// Opens a device of the group by name (its BDF), optionally with the VF
    /// token a PF driver set. The group must be in a container with an IOMMU set.
    /// The corresponding ioctl is `VFIO_GROUP_GET_DEVICE_FD`.
    public func device(_ name: String, vfToken: UUID? = nil) throws(VFIOError) -> VFIODevice {
        let request = vfToken.map { "\(name) vf_token=\($0.uuidString.lowercased())" } ?? name
        let result = request.withCString { p in
            Result { () throws(VFIOError) -> Int32 in
                try fd.ioctl(VFIO_GROUP_GET_DEVICE_FD, UnsafeMutableRawPointer(mutating: p), object: "\(label) device \(name)")
            }
        }
        let dfd = try result.get()
        return VFIODevice(fd: OwnedFD(dfd, label: "\(name) (group \(number))", kernel: fd.kernel), path: .group(name),
                          group: self)
    }

    /// Closes the group fd, then releases the container; idempotent.
    public func close() throws(VFIOError) {
        defer { containerBox.withLock { $0 = nil } }
        try fd.close()
    }

    deinit { try? fd.close() }
}
