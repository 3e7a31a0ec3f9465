import VFIOSystem

/// PCI configuration space of a VFIO device, through the config region
/// (vfio-pci virtualizes parts of it: the kernel filters what userspace may
/// change). Reads and writes are little-endian.
public struct PCIConfigSpace: Sendable {
    /// The device whose config space this is (kept open).
    public let device: VFIODevice
    /// The config region (`VFIO_PCI_CONFIG_REGION_INDEX`) it reads and writes.
    public let region: VFIORegionInfo

    /// Reads a byte at `offset`: `pread` on the device fd at the config region's offset.
    public func read8(_ offset: UInt64) throws(VFIOError) -> UInt8 { try device.read(region: region, at: offset) }
    /// Reads 16 bits at `offset` (little-endian): `pread` on the device fd.
    public func read16(_ offset: UInt64) throws(VFIOError) -> UInt16 { try device.read(region: region, at: offset) }
    /// Reads 32 bits at `offset` (little-endian): `pread` on the device fd.
    public func read32(_ offset: UInt64) throws(VFIOError) -> UInt32 { try device.read(region: region, at: offset) }
    /// Writes a byte at `offset`: `pwrite` on the device fd (vfio-pci filters what it lets through).
    public func write8(_ v: UInt8, at offset: UInt64) throws(VFIOError) { try device.write(v, region: region, at: offset) }
    /// Writes 16 bits at `offset` (little-endian): `pwrite` on the device fd.
    public func write16(_ v: UInt16, at offset: UInt64) throws(VFIOError) { try device.write(v, region: region, at: offset) }
    /// Writes 32 bits at `offset` (little-endian): `pwrite` on the device fd.
    public func write32(_ v: UInt32, at offset: UInt64) throws(VFIOError) { try device.write(v, region: region, at: offset) }

    /// The vendor id (offset 0).
    public var vendorID: UInt16 { get throws(VFIOError) { try read16(0x00) } }
    /// The device id (offset 2).
    public var deviceID: UInt16 { get throws(VFIOError) { try read16(0x02) } }

    /// The command register (offset 4).
    public struct Command: OptionSet, Sendable {
        /// The register's bits.
        public let rawValue: UInt16
        /// A command value from its bits.
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Bit 0: the device answers I/O space accesses.
        public static let ioSpace = Command(rawValue: 1 << 0)
        /// Bit 1: the device answers memory space accesses (its BARs).
        public static let memorySpace = Command(rawValue: 1 << 1)
        /// Bit 2: the device may start memory transactions: DMA, and MSIs.
        public static let busMaster = Command(rawValue: 1 << 2)
        /// Bit 6: parity errors are reported.
        public static let parityErrorResponse = Command(rawValue: 1 << 6)
        /// Bit 8: system errors (SERR#) are reported.
        public static let serr = Command(rawValue: 1 << 8)
        /// Bit 10: INTx is disabled.
        public static let interruptDisable = Command(rawValue: 1 << 10)
    }

    /// Reads the command register (offset 4).
    public func command() throws(VFIOError) -> Command { Command(rawValue: try read16(0x04)) }
    /// Writes the command register (offset 4).
    public func setCommand(_ c: Command) throws(VFIOError) { try write16(c.rawValue, at: 0x04) }

    /// Turns bus mastering (the device's permission to DMA) on or off.
    public func setBusMaster(_ on: Bool) throws(VFIOError) {
        var c = try command()
        if on { c.insert(.busMaster) } else { c.remove(.busMaster) }
        try setCommand(c)
    }

    /// Standard capability ids (config offset 0x34 list).
    public enum CapabilityID: UInt8, Sendable {
        /// 0x01: Power Management.
        case powerManagement = 0x01
        /// 0x02: AGP.
        case agp = 0x02
        /// 0x03: Vital Product Data.
        case vpd = 0x03
        /// 0x04: Slot Identification.
        case slotID = 0x04
        /// 0x05: MSI.
        case msi = 0x05
        /// 0x08: HyperTransport.
        case hyperTransport = 0x08
        /// 0x09: Vendor-Specific.
        case vendorSpecific = 0x09
        /// 0x0a: Debug Port.
        case debugPort = 0x0a
        /// 0x0d: PCI Bridge Subsystem Vendor ID.
        case pciBridgeSubsystemVendorID = 0x0d
        /// 0x10: PCI Express.
        case pciExpress = 0x10
        /// 0x11: MSI-X.
        case msix = 0x11
        /// 0x12: SATA Data/Index Configuration.
        case sata = 0x12
        /// 0x13: Advanced Features.
        case advancedFeatures = 0x13
        /// 0x14: Enhanced Allocation.
        case enhancedAllocation = 0x14
    }

    /// Extended capability ids (PCIe, from offset 0x100).
    public enum ExtendedCapabilityID: UInt16, Sendable {
        /// 0x0001: Advanced Error Reporting.
        case aer = 0x0001
        /// 0x0002: Virtual Channel.
        case virtualChannel = 0x0002
        /// 0x0003: Device Serial Number.
        case deviceSerialNumber = 0x0003
        /// 0x0004: Power Budgeting.
        case powerBudgeting = 0x0004
        /// 0x000d: Access Control Services (peer-to-peer isolation: what IOMMU groups depend on).
        case acs = 0x000d
        /// 0x000e: Alternative Routing-ID Interpretation.
        case ari = 0x000e
        /// 0x000f: Address Translation Services.
        case ats = 0x000f
        /// 0x0010: Single Root I/O Virtualization.
        case sriov = 0x0010
        /// 0x0015: Resizable BAR.
        case resizableBAR = 0x0015
        /// 0x0018: Latency Tolerance Reporting.
        case ltr = 0x0018
        /// 0x0019: Secondary PCI Express.
        case secondaryPCIe = 0x0019
        /// 0x001b: Process Address Space ID.
        case pasid = 0x001b
        /// 0x001e: L1 PM Substates.
        case l1pmSubstates = 0x001e
        /// 0x001d: Downstream Port Containment.
        case dpc = 0x001d
        /// 0x001f: Precision Time Measurement.
        case ptm = 0x001f
        /// 0x0023: Designated Vendor-Specific.
        case dvsec = 0x0023
        /// 0x0025: Data Link Feature.
        case dataLink = 0x0025
        /// 0x0026: Physical Layer 16.0 GT/s.
        case physicalLayer16 = 0x0026
    }

    /// One entry of the standard capability list.
    public struct Capability: Sendable, Equatable {
        /// The capability id.
        public var id: UInt8
        /// Where it is in config space.
        public var offset: UInt16
        /// The id as a ``CapabilityID``, when VFIOKit names it.
        public var known: CapabilityID? { CapabilityID(rawValue: id) }
    }

    /// One entry of the PCIe extended capability list.
    public struct ExtendedCapability: Sendable, Equatable {
        /// The extended capability id.
        public var id: UInt16
        /// The capability's version.
        public var version: UInt8
        /// Where it is in config space (0x100 or later).
        public var offset: UInt16
        /// The id as an ``ExtendedCapabilityID``, when VFIOKit names it.
        public var known: ExtendedCapabilityID? { ExtendedCapabilityID(rawValue: id) }
    }

    /// The standard capability list; bounded (48 entries) and loop-safe.
    public func capabilities() throws(VFIOError) -> [Capability] {
        guard try read16(0x06) & 0x10 != 0 else { return [] }  // status: capabilities list
        var out: [Capability] = []
        var ptr = UInt16(try read8(0x34) & 0xfc)
        var seen = Set<UInt16>()
        while ptr >= 0x40, out.count < 48, seen.insert(ptr).inserted {
            let id = try read8(UInt64(ptr))
            out.append(Capability(id: id, offset: ptr))
            ptr = UInt16(try read8(UInt64(ptr) + 1) & 0xfc)
        }
        return out
    }

    /// The extended capability list (PCIe devices; empty for conventional PCI
    /// or when config space is only 256 bytes).
    public func extendedCapabilities() throws(VFIOError) -> [ExtendedCapability] {
        guard region.size > 0x100 else { return [] }
        var out: [ExtendedCapability] = []
        var ptr: UInt16 = 0x100
        var seen = Set<UInt16>()
        while ptr >= 0x100, out.count < 96, seen.insert(ptr).inserted {
            let h = try read32(UInt64(ptr))
            if h == 0 || h == 0xffff_ffff { break }
            out.append(ExtendedCapability(id: UInt16(h & 0xffff), version: UInt8((h >> 16) & 0xf), offset: ptr))
            ptr = UInt16((h >> 20) & 0xffc)
        }
        return out
    }

    /// The offset of a standard capability, if present.
    public func find(_ id: CapabilityID) throws(VFIOError) -> UInt16? {
        try capabilities().first(where: { $0.id == id.rawValue })?.offset
    }
}

extension VFIODevice {
    /// Config space through the config region.
    public func configSpace() throws(VFIOError) -> PCIConfigSpace {
        PCIConfigSpace(device: self, region: try regionInfo(PCIRegion.config))
    }
}
