import CVFIO
import VFIOSystem

/// The vfio-pci interrupt indexes.
public enum IRQIndex: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    /// `VFIO_PCI_INTX_IRQ_INDEX`: the legacy level-triggered line interrupt (one vector).
    case intx = 0
    /// `VFIO_PCI_MSI_IRQ_INDEX`: message-signalled interrupts (up to 32 vectors).
    case msi = 1
    /// `VFIO_PCI_MSIX_IRQ_INDEX`: MSI-X (up to 2048 vectors, each maskable).
    case msix = 2
    /// AER error reporting (one eventfd).
    case err = 3
    /// The kernel asks userspace to release the device (one eventfd).
    case req = 4
    public var description: String {
        switch self {
        case .intx: "INTx"
        case .msi: "MSI"
        case .msix: "MSI-X"
        case .err: "ERR"
        case .req: "REQ"
        }
    }
}

/// What `VFIO_DEVICE_GET_IRQ_INFO` reports for one index.
public struct IRQInfo: Sendable, Equatable {
    /// The interrupt index (``IRQIndex``'s raw value).
    public var index: UInt32
    /// `VFIO_IRQ_INFO_*` flags.
    public var flags: UInt32
    /// Vectors available (0: the device does not have this interrupt).
    public var count: UInt32
    /// Vectors can signal eventfds (`VFIO_IRQ_INFO_EVENTFD`).
    public var supportsEventFD: Bool { flags & VFIO_IRQ_INFO_EVENTFD != 0 }
    /// Vectors can be masked (`VFIO_IRQ_INFO_MASKABLE`).
    public var isMaskable: Bool { flags & VFIO_IRQ_INFO_MASKABLE != 0 }
    /// Level-triggered (INTx): the kernel masks on delivery, userspace unmasks.
    public var isAutomasked: Bool { flags & VFIO_IRQ_INFO_AUTOMASKED != 0 }
    /// Vectors cannot be added without disabling first.
    public var isNoResize: Bool { flags & VFIO_IRQ_INFO_NORESIZE != 0 }
}

extension VFIODevice {
    /// The corresponding ioctl is `VFIO_DEVICE_GET_IRQ_INFO`.
    public func irqInfo(_ index: IRQIndex) throws(VFIOError) -> IRQInfo {
        var arg = vfio_irq_info.make()
        arg.index = index.rawValue
        _ = try fd.ioctl(.vfioDeviceGetIRQInfo, &arg,
                         object: "\(label) \(index)")
        return IRQInfo(index: arg.index, flags: arg.flags, count: arg.count)
    }

    /// Builds a `vfio_irq_set` with `data` after the header and issues it.
    func setIRQs(_ index: IRQIndex, flags: UInt32, start: UInt32, count: UInt32, data: [UInt8],
                 what: String) throws(VFIOError)
    {
        // Vectors start ..< start + count, counted in 64 bits: the end may be 2^32, never more.
        let end = UInt64(start) + UInt64(count)
        guard end <= UInt64(UInt32.max) + 1 else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceSetIRQs), "vectors \(start)..<\(end) of \(index) run past the last "
                                        + "vector number the kernel can name (\(UInt32.max))", object: label,
                                    remedies: [.advice("irqInfo(_:).count says how many vectors the device has")])
        }
        let headerSize = MemoryLayout<vfio_irq_set>.size
        var header = vfio_irq_set.make()
        header.argsz = UInt32(headerSize + data.count)
        header.flags = flags
        header.index = index.rawValue
        header.start = start
        header.count = count
        var buffer = KernelBytes(header, count: headerSize + data.count)
        _ = try buffer.withUnsafeMutableRawPointer { (p) throws(VFIOError) in
            for (i, b) in data.enumerated() { p.storeBytes(of: b, toByteOffset: headerSize + i, as: UInt8.self) }
            return try fd.ioctl(.vfioDeviceSetIRQs, p,
                                object: "\(label) \(index) \(what) vectors \(start)..<\(end)")
        }
    }

    /// Routes vectors `start..<start+eventfds.count` of `index` to eventfds
    /// (nil de-assigns that vector, fd -1). Enables MSI/MSI-X with that many
    /// vectors. The device keeps the eventfds alive until ``disableIRQ(_:)``.
    /// Lower level than ``interrupts(_:count:start:)``, whose handles turn
    /// their vectors off when released: here that is the caller's job.
    /// The corresponding ioctl is `VFIO_DEVICE_SET_IRQS` with
    /// `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`.
    public func setIRQTrigger(_ index: IRQIndex, start: UInt32 = 0, eventfds: [EventFD?]) throws(VFIOError) {
        // The eventfd numbers are in the argument: hold each open for the call
        // (a closed one throws "closed" and is never routed to an interrupt).
        try OwnedFD.withDescriptors(eventfds.map { $0?.fd }, .ioctl(.vfioDeviceSetIRQs)) { (numbers) throws(VFIOError) in
            var data: [UInt8] = []
            data.reserveCapacity(numbers.count * 4)
            for v in numbers { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
            try setIRQs(index, flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, start: start,
                        count: UInt32(eventfds.count), data: data, what: "trigger eventfds")
        }
        binding.withLock { b in
            var list = b.irqEventFDs[index.rawValue] ?? []
            let end = Int(start) + eventfds.count
            if list.count < end { list += [EventFD?](repeating: nil, count: end - list.count) }
            for (i, e) in eventfds.enumerated() { list[Int(start) + i] = e }
            b.irqEventFDs[index.rawValue] = list
        }
    }

    /// Turns off all vectors of `index` (MSI/MSI-X are disabled in the device).
    /// The corresponding ioctl is `VFIO_DEVICE_SET_IRQS` with `DATA_NONE |
    /// ACTION_TRIGGER` and count 0.
    public func disableIRQ(_ index: IRQIndex) throws(VFIOError) {
        try setIRQs(index, flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, start: 0, count: 0,
                    data: [], what: "disable")
        _ = binding.withLock { $0.irqEventFDs.removeValue(forKey: index.rawValue) }
    }

    /// Masks vectors (INTx, or maskable MSI-X). `VFIO_IRQ_SET_ACTION_MASK`.
    public func maskIRQ(_ index: IRQIndex, start: UInt32 = 0, count: UInt32 = 1) throws(VFIOError) {
        try setIRQs(index, flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, start: start, count: count,
                    data: [], what: "mask")
    }

    /// Unmasks vectors (INTx after each automasked interrupt). `VFIO_IRQ_SET_ACTION_UNMASK`.
    public func unmaskIRQ(_ index: IRQIndex, start: UInt32 = 0, count: UInt32 = 1) throws(VFIOError) {
        try setIRQs(index, flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, start: start, count: count,
                    data: [], what: "unmask")
    }

    /// Lets the kernel unmask INTx itself when `eventfd` is signalled (irqfd
    /// style). `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK`.
    public func setIRQUnmaskEventFD(_ index: IRQIndex, vector: UInt32 = 0, eventfd: EventFD?) throws(VFIOError) {
        try OwnedFD.withDescriptors([eventfd?.fd], .ioctl(.vfioDeviceSetIRQs)) { (numbers) throws(VFIOError) in
            let data = withUnsafeBytes(of: numbers[0].littleEndian) { Array($0) }
            try setIRQs(index, flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, start: vector, count: 1,
                        data: data, what: "unmask eventfd")
        }
    }

    /// Fires vectors from software, as if the device had (a loopback test of
    /// the eventfd path). `VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER`.
    public func triggerIRQ(_ index: IRQIndex, start: UInt32 = 0, count: UInt32 = 1) throws(VFIOError) {
        try setIRQs(index, flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, start: start, count: count,
                    data: [], what: "software trigger")
    }

    /// Sets per-vector booleans for an action (`VFIO_IRQ_SET_DATA_BOOL`):
    /// true entries get the action (trigger, mask or unmask).
    public func setIRQs(_ index: IRQIndex, action: IRQAction, start: UInt32 = 0, flags bools: [Bool]) throws(VFIOError) {
        try setIRQs(index, flags: VFIO_IRQ_SET_DATA_BOOL | action.flag, start: start, count: UInt32(bools.count),
                    data: bools.map { $0 ? 1 : 0 }, what: "\(action) bools")
    }
}

/// The actions of `VFIO_DEVICE_SET_IRQS`.
public enum IRQAction: Sendable {
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`: route to an eventfd, or fire from software.
    case trigger
    /// `VFIO_IRQ_SET_ACTION_MASK`: mask.
    case mask
    /// `VFIO_IRQ_SET_ACTION_UNMASK`: unmask.
    case unmask
    var flag: UInt32 {
        switch self {
        case .trigger: VFIO_IRQ_SET_ACTION_TRIGGER
        case .mask: VFIO_IRQ_SET_ACTION_MASK
        case .unmask: VFIO_IRQ_SET_ACTION_UNMASK
        }
    }
}
