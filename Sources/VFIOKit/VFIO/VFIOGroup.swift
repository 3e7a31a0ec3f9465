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

    /// One device in the IOMMU group, as sysfs shows it.
    public struct Member: Sendable, Equatable, CustomStringConvertible {
        public var bdf: String
        /// The bound driver, or nil.
        public var driver: String?
        /// A PCI bridge (class 0x0604): vfio-pci does not take bridges; they
        /// may stay unbound or on pcieport.
        public var isBridge: Bool
        public var description: String { "\(bdf) (\(driver.map { "driver \($0)" } ?? "no driver")\(isBridge ? ", bridge" : ""))" }
    }

    /// The members of IOMMU group `number`, from /sys/kernel/iommu_groups/N/devices.
    public static func members(ofGroup number: Int, sysfsRoot: String = "/sys") -> [Member] {
        SysfsFiles.list("\(sysfsRoot)/kernel/iommu_groups/\(number)/devices").map { bdf in
            let dev = "\(sysfsRoot)/bus/pci/devices/\(bdf)"
            let cls = SysfsFiles.read("\(dev)/class").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
            return Member(bdf: bdf, driver: SysfsFiles.linkTargetName("\(dev)/driver"), isBridge: cls >> 8 == 0x0604)
        }
    }

    /// The IOMMU group number of a PCI device.
    public static func groupNumber(of bdf: String, sysfsRoot: String = "/sys") throws(VFIOError) -> Int {
        guard let name = SysfsFiles.linkTargetName("\(sysfsRoot)/bus/pci/devices/\(bdf)/iommu_group"), let n = Int(name) else {
            throw VFIOError.invalid("find IOMMU group", "\(bdf) has no IOMMU group", object: bdf,
                                    hint: "the device does not exist, or the kernel runs without an IOMMU (`vfioctl doctor`)")
        }
        return n
    }

    /// Members that stop VFIOKit from using the group: with `strict`, every
    /// non-bridge member must be bound to vfio-pci (an unbound member could be
    /// claimed by a kernel driver later); otherwise only members bound to a
    /// driver that does its own DMA (anything but vfio-pci, pci-stub, pcieport).
    public static func blockingMembers(_ members: [Member], strict: Bool) -> [Member] {
        members.filter { m in
            switch m.driver {
            // vfio-pci is ours; pci-stub parks a device; pcieport drives ports (bridges), not DMA.
            case "vfio-pci"?, "pci-stub"?, "pcieport"?: return false
            case nil: return strict && !m.isBridge
            default: return true
            }
        }
    }

    static func blockedError(_ op: String, group: Int, _ blocking: [Member], errno: Errno? = nil) -> VFIOError {
        let names = blocking.map(\.description).joined(separator: ", ")
        return VFIOError(operation: op, errno: errno, object: "/dev/vfio/\(group)",
                         detail: "IOMMU group \(group) is not viable: \(names) "
                            + "\(blocking.count == 1 ? "is" : "are") not bound to vfio-pci",
                         hint: "every device in an IOMMU group must be bound to vfio-pci before the group can be used: "
                            + blocking.map { "`vfioctl bind \($0.bdf)`" }.joined(separator: ", "))
    }

    /// Opens `/dev/vfio/N` and checks that the group is viable. With
    /// `requireAllMembersBound` (the default) VFIOKit also refuses a group
    /// with a member not bound to vfio-pci (bridges excepted), naming it.
    public init(number: Int, requireAllMembersBound: Bool = true, sysfsRoot: String = "/sys") throws(VFIOError) {
        let path = "/dev/vfio/\(number)"
        do {
            fd = try OwnedFD.open(path)
        } catch {
            let blocking = VFIOGroup.blockingMembers(VFIOGroup.members(ofGroup: number, sysfsRoot: sysfsRoot), strict: true)
            if error.errno?.rawValue == 2, !blocking.isEmpty {
                throw VFIOGroup.blockedError("open", group: number, blocking, errno: error.errno)
            }
            throw error
        }
        self.number = number
        let s = try status()
        let members = VFIOGroup.members(ofGroup: number, sysfsRoot: sysfsRoot)
        if !s.viable {
            throw VFIOGroup.blockedError("VFIO_GROUP_GET_STATUS", group: number,
                                         VFIOGroup.blockingMembers(members, strict: false))
        }
        if requireAllMembersBound {
            let blocking = VFIOGroup.blockingMembers(members, strict: true)
            if !blocking.isEmpty { throw VFIOGroup.blockedError("open group", group: number, blocking) }
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
        _ = try Sys.ioctl(try fd.get("VFIO_GROUP_GET_STATUS"), VFIO_GROUP_GET_STATUS, &arg, object: label)
        return Status(viable: arg.flags & VFIO_GROUP_FLAGS_VIABLE != 0,
                      containerSet: arg.flags & VFIO_GROUP_FLAGS_CONTAINER_SET != 0)
    }

    /// The container the group is in.
    public var container: VFIOContainer? { containerBox.withLock { $0 } }

    /// Adds the group to a container (which it then keeps alive). The
    /// corresponding ioctl is `VFIO_GROUP_SET_CONTAINER`.
    public func setContainer(_ container: VFIOContainer) throws(VFIOError) {
        var cfd = try container.fd.get("VFIO_GROUP_SET_CONTAINER")
        _ = try Sys.ioctl(try fd.get("VFIO_GROUP_SET_CONTAINER"), VFIO_GROUP_SET_CONTAINER, &cfd,
                          object: "\(label) -> \(container.label)")
        containerBox.withLock { $0 = container }
    }

    /// Removes the group from its container (every device fd of the group must
    /// be closed). The corresponding ioctl is `VFIO_GROUP_UNSET_CONTAINER`.
    public func unsetContainer() throws(VFIOError) {
        _ = try Sys.ioctl(try fd.get("VFIO_GROUP_UNSET_CONTAINER"), VFIO_GROUP_UNSET_CONTAINER, nil, object: label)
        containerBox.withLock { $0 = nil }
    }

    /// Opens a device of the group by name (its BDF), optionally with the VF
    /// token a PF driver set. The group must be in a container with an IOMMU set.
    /// The corresponding ioctl is `VFIO_GROUP_GET_DEVICE_FD`.
    public func device(_ name: String, vfToken: UUID? = nil) throws(VFIOError) -> VFIODevice {
        let request = vfToken.map { "\(name) vf_token=\($0.uuidString.lowercased())" } ?? name
        let gfd = try fd.get("VFIO_GROUP_GET_DEVICE_FD")
        let result = request.withCString { p in
            Result { () throws(VFIOError) -> Int32 in
                try Sys.ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, UnsafeMutableRawPointer(mutating: p), object: "\(label) device \(name)")
            }
        }
        let dfd = try result.get()
        return VFIODevice(fd: OwnedFD(dfd, label: "\(name) (group \(number))"), path: .group(name), group: self)
    }

    /// Closes the group fd, then releases the container; idempotent.
    public func close() throws(VFIOError) {
        defer { containerBox.withLock { $0 = nil } }
        try fd.close()
    }

    deinit { try? fd.close() }
}
