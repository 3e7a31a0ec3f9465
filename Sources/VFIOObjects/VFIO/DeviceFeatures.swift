import CVFIO
import VFIOSystem

/// What a `VFIO_DEVICE_FEATURE` probe found.
public struct FeatureSupport: Sendable, Equatable {
    /// The feature can be read (`VFIO_DEVICE_FEATURE_GET` probe succeeded).
    public var get: Bool
    /// The feature can be written (`VFIO_DEVICE_FEATURE_SET` probe succeeded).
    public var set: Bool
    /// Either.
    public var isSupported: Bool { self.get || self.set }
}

/// Device migration states (`enum vfio_device_mig_state`).
public enum MigrationState: UInt32, Sendable {
    /// `VFIO_DEVICE_STATE_ERROR`: a failed transition; only a reset leaves it.
    case error = 0
    /// `VFIO_DEVICE_STATE_STOP`: not running, no DMA, no interrupts.
    case stop = 1
    /// `VFIO_DEVICE_STATE_RUNNING`: normal operation.
    case running = 2
    /// `VFIO_DEVICE_STATE_STOP_COPY`: stopped, its state readable from the data fd.
    case stopCopy = 3
    /// `VFIO_DEVICE_STATE_RESUMING`: stopped, taking its state from the data fd.
    case resuming = 4
    /// `VFIO_DEVICE_STATE_RUNNING_P2P`: running, but no new peer-to-peer DMA is started.
    case runningP2P = 5
    /// `VFIO_DEVICE_STATE_PRE_COPY`: running, its state already readable.
    case preCopy = 6
    /// `VFIO_DEVICE_STATE_PRE_COPY_P2P`: pre-copy with peer-to-peer quiesced.
    case preCopyP2P = 7
}

extension VFIODevice {
    /// Asks whether the device supports a feature for get and for set; "not
    /// supported by this device" (ENOTTY/EOPNOTSUPP/EINVAL) is an answer, not an error.
    /// The corresponding ioctl is `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_PROBE`.
    public func probeFeature(_ feature: UInt32) throws(VFIOError) -> FeatureSupport {
        FeatureSupport(get: try probe(feature, VFIO_DEVICE_FEATURE_GET), set: try probe(feature, VFIO_DEVICE_FEATURE_SET))
    }

    private func probe(_ feature: UInt32, _ op: UInt32) throws(VFIOError) -> Bool {
        do {
            _ = try runFeature(flags: feature | op | VFIO_DEVICE_FEATURE_PROBE, payload: [], object: "probe")
            return true
        } catch {
            if let e = error.errno, e == .inappropriateIOCTLForDevice || e == .notSupported || e == .invalidArgument { return false }
            throw error
        }
    }

    /// Reads a feature's payload (`count` bytes). The corresponding ioctl is
    /// `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_GET`.
    public func getFeature(_ feature: UInt32, count: Int) throws(VFIOError) -> [UInt8] {
        try notSupportedByDevice { () throws(VFIOError) in
            try self.runFeature(flags: feature | VFIO_DEVICE_FEATURE_GET, payload: [UInt8](repeating: 0, count: count), object: "get")
        }
    }

    /// Sets a feature with `payload`. The corresponding ioctl is
    /// `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_SET`.
    public func setFeature(_ feature: UInt32, payload: [UInt8]) throws(VFIOError) {
        _ = try notSupportedByDevice { () throws(VFIOError) in
            try self.runFeature(flags: feature | VFIO_DEVICE_FEATURE_SET, payload: payload, object: "set")
        }
    }

    func notSupportedByDevice<R>(_ body: () throws(VFIOError) -> R) throws(VFIOError) -> R {
        do { return try body() } catch {
            var e = error
            if let n = e.errno, n == .inappropriateIOCTLForDevice || n == .notSupported {
                e.detail = "not supported by this device"
                e.remedies = [.advice("probeFeature(_:) tells which features a device has; emulated devices have few")]
            }
            throw e
        }
    }

    /// Issues a feature whose ioctl result is a value (a new fd for DMA_BUF).
    func featureReturningValue(flags: UInt32, payload: [UInt8]) throws(VFIOError) -> Int32 {
        try issueFeature(flags: flags, payload: payload, object: "get").result
    }

    func runFeature(flags: UInt32, payload: [UInt8], object what: String) throws(VFIOError) -> [UInt8] {
        try issueFeature(flags: flags, payload: payload, object: what).payload
    }

    /// `VFIO_DEVICE_FEATURE` with a header and `payload`: the ioctl's result and
    /// the payload as the kernel left it.
    private func issueFeature(flags: UInt32, payload: [UInt8], object what: String)
        throws(VFIOError) -> (result: Int32, payload: [UInt8]) {
        let headerSize = MemoryLayout<vfio_device_feature>.size
        var header = vfio_device_feature.make()
        header.argsz = UInt32(headerSize + payload.count)
        header.flags = flags
        var buffer = KernelBytes(header, count: Int(header.argsz))
        let name = featureName(flags & VFIO_DEVICE_FEATURE_MASK)
        let result = try buffer.withUnsafeMutableRawPointer { (p) throws(VFIOError) in
            for (i, b) in payload.enumerated() { p.storeBytes(of: b, toByteOffset: headerSize + i, as: UInt8.self) }
            return try fd.ioctl(.vfioDeviceFeature, p, object: "\(label) \(what) \(name)")
        }
        return (result, buffer.bytes(at: headerSize, length: payload.count) ?? [])
    }

    func featureName(_ id: UInt32) -> String {
        switch id {
        case VFIO_DEVICE_FEATURE_PCI_VF_TOKEN: "PCI_VF_TOKEN"
        case VFIO_DEVICE_FEATURE_MIGRATION: "MIGRATION"
        case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: "MIG_DEVICE_STATE"
        case VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: "LOW_POWER_ENTRY"
        case VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: "LOW_POWER_ENTRY_WITH_WAKEUP"
        case VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: "LOW_POWER_EXIT"
        case VFIO_DEVICE_FEATURE_DMA_LOGGING_START: "DMA_LOGGING_START"
        case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: "DMA_LOGGING_STOP"
        case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: "DMA_LOGGING_REPORT"
        case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: "MIG_DATA_SIZE"
        case VFIO_DEVICE_FEATURE_BUS_MASTER: "BUS_MASTER"
        case VFIO_DEVICE_FEATURE_DMA_BUF: "DMA_BUF"
        case VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2: "MIG_PRECOPY_INFOv2"
        default: "feature \(id)"
        }
    }

    /// Enters runtime low power (D3); `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`.
    /// It revokes the device's dma-bufs (``BARDMABuf``).
    public func enterLowPower() throws(VFIOError) {
        try setFeature(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, payload: [])
        noteRevocation(.lowPower)
    }
    /// Leaves low power; `VFIO_DEVICE_FEATURE_LOW_POWER_EXIT`.
    public func exitLowPower() throws(VFIOError) { try setFeature(VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, payload: []) }

    /// Sets or clears bus mastering through the feature (devices whose config
    /// space is not emulated by vfio-pci); `VFIO_DEVICE_FEATURE_BUS_MASTER`.
    public func setBusMasterFeature(_ on: Bool) throws(VFIOError) {
        var payload = [UInt8](repeating: 0, count: 4)
        payload.withUnsafeMutableBytes {
            $0.storeBytes(of: on ? VFIO_DEVICE_FEATURE_SET_MASTER : VFIO_DEVICE_FEATURE_CLEAR_MASTER, as: UInt32.self)
        }
        try setFeature(VFIO_DEVICE_FEATURE_BUS_MASTER, payload: payload)
    }

    /// Which of the well-known features the device has, by name.
    public func featureSummary() throws(VFIOError) -> [(name: String, support: FeatureSupport)] {
        let ids: [UInt32] = [
            VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
            VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_BUS_MASTER,
            VFIO_DEVICE_FEATURE_DMA_BUF,
        ]
        var out: [(String, FeatureSupport)] = []
        for id in ids { out.append((featureName(id), try probeFeature(id))) }
        return out
    }

    /// Makes the kernel write `data` (`width` bytes) at `offset` of a region
    /// whenever `eventfd` is signalled, without a trip through userspace; nil
    /// eventfd removes it. The corresponding ioctl is `VFIO_DEVICE_IOEVENTFD`.
    public func setIOEventFD(region: VFIORegionInfo, offset: UInt64, width: Int, data: UInt64, eventfd: EventFD?) throws(VFIOError) {
        var arg = vfio_device_ioeventfd.make()
        switch width {
        case 1: arg.flags = VFIO_DEVICE_IOEVENTFD_8
        case 2: arg.flags = VFIO_DEVICE_IOEVENTFD_16
        case 4: arg.flags = VFIO_DEVICE_IOEVENTFD_32
        case 8: arg.flags = VFIO_DEVICE_IOEVENTFD_64
        default: throw VFIOError.invalid(.ioctl(.vfioDeviceIOEventFD), "width must be 1, 2, 4 or 8 bytes, got \(width)", object: label)
        }
        arg.offset = region.offset + offset
        arg.data = data
        do throws(VFIOError) {
            // The eventfd's number is in the argument: hold it open for the call.
            try OwnedFD.withDescriptors([eventfd?.fd], .ioctl(.vfioDeviceIOEventFD)) { (numbers) throws(VFIOError) in
                arg.fd = numbers[0]
                _ = try fd.ioctl(.vfioDeviceIOEventFD, &arg,
                                 object: "\(label) region \(region.index) + 0x\(String(offset, radix: 16))")
            }
        } catch {
            var e = error
            if let n = e.errno, n == .inappropriateIOCTLForDevice || n == .notSupported { e.detail = "not supported by this device" }
            throw e
        }
    }
}
