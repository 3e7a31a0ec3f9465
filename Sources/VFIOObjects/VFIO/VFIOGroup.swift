import CVFIO
import FoundationEssentials
import Synchronization
import VFIOSystem

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

    /// Opens `/dev/vfio/N` and checks the kernel's verdict on the group
    /// (`VFIO_GROUP_GET_STATUS`): a group that is not viable (a member is on a
    /// kernel driver that does DMA) is refused. Which members, and VFIOKit's
    /// stricter every-member-on-vfio-pci rule, are the host's to say: VFIOKit's
    /// `VFIOGroup(number:host:)` and `VFIOGroup(of:)` add them.
    public convenience init(number: Int) throws(VFIOError) {
        self.init(fd: try OwnedFD.open("/dev/vfio/\(number)"), number: number)
        let s = try status()
        if !s.viable {
            throw VFIOError.invalid(.ioctl(.vfioGroupGetStatus), "IOMMU group \(number) is not viable (the kernel's "
                                    + "VFIO_GROUP_FLAGS_VIABLE is clear: a member is on a kernel driver that does DMA)",
                                    object: label,
                                    remedies: [.bindGroup(nil)])
        }
    }

    /// Owns an open group fd of group `number` (checked by the caller).
    package init(fd: OwnedFD, number: Int) {
        self.fd = fd
        self.number = number
    }

    package var label: String { "/dev/vfio/\(number)" }

    /// What `VFIO_GROUP_GET_STATUS` reports.
    public struct Status: Sendable, Equatable {
        /// No device of the group is used by a kernel driver that does DMA.
        public var viable: Bool
        /// The group is in a container (`VFIO_GROUP_FLAGS_CONTAINER_SET`).
        public var containerSet: Bool
    }

    /// The corresponding ioctl is `VFIO_GROUP_GET_STATUS`.
    public func status() throws(VFIOError) -> Status {
        var arg = vfio_group_status.make()
        _ = try fd.ioctl(.vfioGroupGetStatus, &arg, object: label)
        return Status(viable: arg.flags & VFIO_GROUP_FLAGS_VIABLE != 0,
                      containerSet: arg.flags & VFIO_GROUP_FLAGS_CONTAINER_SET != 0)
    }

    /// The container the group is in.
    public var container: VFIOContainer? { containerBox.withLock { $0 } }

    /// Adds the group to a container (which it then keeps alive). The
    /// corresponding ioctl is `VFIO_GROUP_SET_CONTAINER`.
    public func setContainer(_ container: VFIOContainer) throws(VFIOError) {
        // The container's number is the argument: hold it open for the call.
        try container.fd.withDescriptor(.ioctl(.vfioGroupSetContainer)) { (number) throws(VFIOError) in
            var cfd = number
            _ = try fd.ioctl(.vfioGroupSetContainer, &cfd, object: "\(label) -> \(container.label)")
        }
        containerBox.withLock { $0 = container }
    }

    /// Removes the group from its container (every device fd of the group must
    /// be closed). The corresponding ioctl is `VFIO_GROUP_UNSET_CONTAINER`.
    public func unsetContainer() throws(VFIOError) {
        _ = try fd.ioctl(.vfioGroupUnsetContainer, nil, object: label)
        containerBox.withLock { $0 = nil }
    }

    /// Opens the PCI function `address` of the group, optionally with the VF
    /// token a PF driver set. The group must be in a container with an IOMMU set.
    /// The corresponding ioctl is `VFIO_GROUP_GET_DEVICE_FD`.
    public func device(_ address: PCIAddress, vfToken: UUID? = nil) throws(VFIOError) -> VFIODevice {
        try device(named: address.description, vfToken: vfToken)
    }

    /// Opens a device of the group by the kernel's name for it (a PCI
    /// function's `DDDD:BB:DD.F`, an mdev's UUID), optionally with a VF token.
    /// The corresponding ioctl is `VFIO_GROUP_GET_DEVICE_FD`.
    public func device(named name: String, vfToken: UUID? = nil) throws(VFIOError) -> VFIODevice {
        let request = vfToken.map { "\(name) vf_token=\($0.uuidString.lowercased())" } ?? name
        let result = request.withCString { p in
            Result { () throws(VFIOError) -> Int32 in
                try fd.ioctl(.vfioGroupGetDeviceFD, UnsafeMutableRawPointer(mutating: p), object: "\(label) device \(name)")
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
