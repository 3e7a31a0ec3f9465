import CVFIO
import VFIOSystem

/// One device a PCI hot reset would reach (`struct vfio_pci_dependent_device`).
public struct HotResetDevice: Sendable, Equatable, CustomStringConvertible {
    /// The PCI segment (domain).
    public var segment: UInt16
    /// The bus number.
    public var bus: UInt8
    /// Device and function, as `device << 3 | function`.
    public var devfn: UInt8
    /// Group path: the IOMMU group of the device. Nil on the cdev path.
    public var groupID: UInt32?
    /// Cdev path: the iommufd device id when this process has it bound in the
    /// same iommufd context; nil otherwise (see ``owned``).
    public var deviceID: UInt32?
    /// Cdev path: whether this process owns the device (bound in the same
    /// iommufd, or opened through this device's dev set). Nil on the group path,
    /// where ownership means holding the group's fd.
    public var owned: Bool?

    /// The device's PCI address (segment, bus, and slot and function from `devfn`).
    public var address: PCIAddress {
        PCIAddress(domain: UInt32(segment), bus: bus, device: devfn >> 3, function: devfn & 7)
    }

    public var description: String {
        var s = address.description
        if let g = groupID { s += " group \(g)" }
        if let d = deviceID { s += " devid \(d)" }
        if let o = owned { s += o ? " (owned)" : " (not owned)" }
        return s
    }
}

/// What `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` reports: a hot reset resets the
/// whole slot or bus, so it reaches every device listed here, not just this one.
public struct HotResetInfo: Sendable, Equatable {
    /// `VFIO_PCI_HOT_RESET_FLAG_*`.
    public var flags: UInt32
    /// Every device the reset would affect.
    public var devices: [HotResetDevice]
    /// Entries carry iommufd device ids (the device was opened as a cdev).
    public var usesDeviceIDs: Bool { flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0 }
    /// Cdev path: every affected device is owned by this process, so
    /// ``VFIODevice/hotReset()`` can proceed.
    public var allOwned: Bool { flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED != 0 }
    /// Group path: the groups whose fds a reset needs.
    public var groupIDs: [UInt32] { Array(Set(devices.compactMap(\.groupID))).sorted() }
}

extension VFIODevice {
    /// Resets the device (FLR, PM or slot reset as the kernel has). Check
    /// ``VFIODeviceInfo/supportsReset`` first. The corresponding ioctl is `VFIO_DEVICE_RESET`.
    public func reset() throws(VFIOError) {
        do {
            _ = try fd.ioctl(.vfioDeviceReset, nil, object: label)
            noteRevocation(.reset)
        } catch {
            // vfio-pci revokes the dma-bufs before it tries the reset; only a device without one stops earlier.
            if let n = error.errno, n != .invalidArgument, n != .inappropriateIOCTLForDevice, n != .badFileDescriptor {
                noteRevocation(.failedReset)
            }
            var e = error
            if e.errno == .inappropriateIOCTLForDevice || e.errno == .notSupported || e.errno == .invalidArgument {
                e.detail = "not supported by this device: it has no reset method (VFIO_DEVICE_FLAGS_RESET is clear)"
                e.remedies = [.advice("check info().supportsReset; a bus/slot hot reset (hotResetInfo()) may still be possible")]
            }
            throw e
        }
    }

    /// The devices a bus or slot hot reset would reach. Throws ENODEV when
    /// neither a slot nor a bus reset is possible (e.g. a device on a root bus).
    /// The corresponding ioctl is `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`.
    public func hotResetInfo() throws(VFIOError) -> HotResetInfo {
        let entry = MemoryLayout<vfio_pci_dependent_device>.stride
        let headerSize = MemoryLayout<vfio_pci_hot_reset_info>.size
        var capacity = 4
        while true {
            var header = vfio_pci_hot_reset_info.make()
            header.argsz = UInt32(headerSize + capacity * entry)
            var buffer = KernelBytes(header, count: Int(header.argsz))
            do {
                _ = try buffer.withUnsafeMutableRawPointer { (p) throws(VFIOError) in
                    try fd.ioctl(.vfioDeviceGetPCIHotResetInfo, p, object: label)
                }
            } catch {
                // ENOSPC: the kernel wrote the count it needs into the header.
                if error.errno == .noSpace, Int(buffer.header.count) > capacity, capacity < 4096 {
                    capacity = Int(buffer.header.count)
                    continue
                }
                var e = error
                if e.errno == .noSuchDevice {
                    e.detail = "not supported by this device: neither a slot nor a bus reset is possible "
                        + "(the device is on a root bus, or its bridge cannot reset the bus)"
                    e.remedies = []
                }
                throw e
            }
            return HotResetInfo(parsing: buffer)
        }
    }

    /// Hot-resets the bus or slot on the cdev path: every affected device must
    /// be owned by this process (``HotResetInfo/allOwned``). The corresponding
    /// ioctl is `VFIO_DEVICE_PCI_HOT_RESET` with an empty group fd array.
    public func hotReset() throws(VFIOError) {
        guard case .cdev = path else {
            throw VFIOError.invalid(.ioctl(.vfioDevicePCIHotReset), "a device opened through its group resets with group fds",
                                    object: label, remedies: [.advice("call hotReset(groups:) with the groups from hotResetInfo()")])
        }
        try hotReset(groupFDs: [])
    }

    /// Hot-resets the bus or slot on the group path, proving ownership with the
    /// fd of every affected group. The corresponding ioctl is `VFIO_DEVICE_PCI_HOT_RESET`.
    public func hotReset(groups: [VFIOGroup]) throws(VFIOError) {
        if groups.isEmpty {
            throw VFIOError.invalid(.ioctl(.vfioDevicePCIHotReset), "the group path needs at least one group fd", object: label)
        }
        // The group numbers are in the argument: hold each open for the call.
        try OwnedFD.withDescriptors(groups.map(\.fd), .ioctl(.vfioDevicePCIHotReset)) { (fds) throws(VFIOError) in
            try hotReset(groupFDs: fds)
        }
    }

    func hotReset(groupFDs: [Int32]) throws(VFIOError) {
        let headerSize = MemoryLayout<vfio_pci_hot_reset>.size
        var header = vfio_pci_hot_reset.make()
        header.argsz = UInt32(headerSize + groupFDs.count * 4)
        header.count = UInt32(groupFDs.count)
        var buffer = KernelBytes(header, count: Int(header.argsz))
        _ = try buffer.withUnsafeMutableRawPointer { (p) throws(VFIOError) in
            for (i, g) in groupFDs.enumerated() { p.storeBytes(of: g, toByteOffset: headerSize + i * 4, as: Int32.self) }
            return try fd.ioctl(.vfioDevicePCIHotReset, p, object: label)
        }
        noteRevocation(.hotReset)
    }
}

extension HotResetInfo {
    init(parsing bytes: KernelBytes<vfio_pci_hot_reset_info>) {
        let h = bytes.header
        let first = MemoryLayout<vfio_pci_hot_reset_info>.size
        let stride = MemoryLayout<vfio_pci_dependent_device>.stride
        let cdev = h.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0
        var out: [HotResetDevice] = []
        for i in 0..<Int(h.count) {
            guard let d = bytes.load(vfio_pci_dependent_device.self, at: first + i * stride) else { break }
            if cdev {
                let id = d.devid
                out.append(HotResetDevice(segment: d.segment, bus: d.bus, devfn: d.devfn, groupID: nil,
                                          deviceID: id == VFIO_PCI_DEVID_OWNED || id == VFIO_PCI_DEVID_NOT_OWNED ? nil : id,
                                          owned: id != VFIO_PCI_DEVID_NOT_OWNED))
            } else {
                out.append(HotResetDevice(segment: d.segment, bus: d.bus, devfn: d.devfn, groupID: d.group_id,
                                          deviceID: nil, owned: nil))
            }
        }
        self.init(flags: h.flags, devices: out)
    }
}
