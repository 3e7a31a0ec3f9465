import CVFIO
import VFIOSystem

/// What `IOMMU_GET_HW_INFO` says about the IOMMU behind one bound device,
/// decoded per vendor.
public struct IOMMUHardwareInfo: Sendable, Equatable {
    /// Generic capabilities (`out_capabilities`).
    public struct Capabilities: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// The IOMMU can track dirty pages (HWPTs with dirty tracking can be allocated).
        public static let dirtyTracking = Capabilities(rawValue: UInt64(IOMMU_HW_CAP_DIRTY_TRACKING.rawValue))
        /// The PCI PASID capability allows execute permission requests.
        public static let pciPASIDExecute = Capabilities(rawValue: UInt64(IOMMU_HW_CAP_PCI_PASID_EXEC.rawValue))
        /// The PCI PASID capability allows privileged-mode requests.
        public static let pciPASIDPrivileged = Capabilities(rawValue: UInt64(IOMMU_HW_CAP_PCI_PASID_PRIV.rawValue))
        /// ATS must not be used with this device (a VMM must not expose it).
        public static let pciATSNotSupported = Capabilities(rawValue: UInt64(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED.rawValue))
    }

    /// Vendor data.
    public enum Vendor: Sendable, Equatable {
        /// No vendor data (an IOMMU driver without `hw_info`).
        case none
        /// Intel VT-d (`IOMMU_HW_INFO_TYPE_INTEL_VTD`): the capability registers.
        case intelVTd(IntelVTdInfo)
        /// Arm SMMUv3 (`IOMMU_HW_INFO_TYPE_ARM_SMMUV3`): the ID registers.
        case armSMMUv3(ARMSMMUv3Info)
        /// NVIDIA Tegra241 CMDQV (`IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV`).
        case tegra241CMDQV(Tegra241CMDQVInfo)
        /// AMD-Vi (`IOMMU_HW_INFO_TYPE_AMD`): the extended feature registers.
        case amd(AMDIOMMUInfo)
        /// The selftest mock IOMMU (`IOMMU_HW_INFO_TYPE_SELFTEST`, kernels with CONFIG_IOMMUFD_TEST).
        case selftest(flags: UInt32, testRegister: UInt32)
        /// A type this version of VFIOKit does not decode: the raw bytes.
        case unknown(type: UInt32, data: [UInt8])
    }

    /// The kernel's type number (`out_data_type`).
    public var dataType: UInt32
    /// The vendor data, decoded (`data_uptr`).
    public var vendor: Vendor
    /// Generic capabilities (`out_capabilities`).
    public var capabilities: Capabilities
    /// log2 of the number of PASIDs the device supports (0: no PASID).
    public var maxPASIDLog2: UInt8

    /// How many PASIDs the device supports (`1 << maxPASIDLog2`, 0 when none).
    public var pasidCount: UInt64 { maxPASIDLog2 == 0 ? 0 : 1 << UInt64(maxPASIDLog2) }

    /// Decodes a kernel answer: `type` and the `data` the kernel wrote.
    public init(dataType: UInt32, data: [UInt8], capabilities: UInt64, maxPASIDLog2: UInt8) {
        self.dataType = dataType
        self.capabilities = Capabilities(rawValue: capabilities)
        self.maxPASIDLog2 = maxPASIDLog2
        func u32(_ o: Int) -> UInt32 { o + 4 <= data.count ? data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt32.self) } : 0 }
        func u64(_ o: Int) -> UInt64 { o + 8 <= data.count ? data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt64.self) } : 0 }
        switch dataType {
        case UInt32(IOMMU_HW_INFO_TYPE_NONE.rawValue):
            vendor = .none
        case UInt32(IOMMU_HW_INFO_TYPE_INTEL_VTD.rawValue):
            vendor = .intelVTd(IntelVTdInfo(flags: u32(0), capability: u64(8), extendedCapability: u64(16)))
        case UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3.rawValue):
            vendor = .armSMMUv3(ARMSMMUv3Info(flags: u32(0), idr: (0..<6).map { u32(8 + 4 * $0) },
                                              iidr: u32(32), aidr: u32(36)))
        case UInt32(IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV.rawValue):
            vendor = .tegra241CMDQV(Tegra241CMDQVInfo(
                flags: u32(0), version: data.count > 4 ? data[4] : 0,
                log2VCMDQs: data.count > 5 ? data[5] : 0, log2VSIDs: data.count > 6 ? data[6] : 0))
        case UInt32(IOMMU_HW_INFO_TYPE_AMD.rawValue):
            vendor = .amd(AMDIOMMUInfo(extendedFeatures: u64(0), extendedFeatures2: u64(8)))
        case IOMMUHardwareInfo.selftestType:
            vendor = .selftest(flags: u32(0), testRegister: u32(4))
        default:
            vendor = .unknown(type: dataType, data: data)
        }
    }

    /// `IOMMU_HW_INFO_TYPE_SELFTEST` of the kernel's iommufd_test.h.
    public static let selftestType: UInt32 = 0xfeed_beef
}

/// Intel VT-d capability and extended capability registers (VT-d spec 11.4.2, 11.4.3).
public struct IntelVTdInfo: Sendable, Equatable {
    /// `IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17` and future flags.
    public var flags: UInt32
    /// CAP_REG.
    public var capability: UInt64
    /// ECAP_REG.
    public var extendedCapability: UInt64

    @inline(__always) func cap(_ shift: UInt64, _ mask: UInt64 = 1) -> UInt64 { (capability >> shift) & mask }
    @inline(__always) func ecap(_ shift: UInt64, _ mask: UInt64 = 1) -> UInt64 { (extendedCapability >> shift) & mask }

    /// The SPR17 errata: a stage-2 domain must not be used for nesting with dirty tracking.
    public var hasErrata772415SPR17: Bool { flags & UInt32(IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17.rawValue) != 0 }

    // CAP_REG
    /// Number of domain ids supported (ND).
    public var domainCount: UInt64 { 1 << (4 + 2 * cap(0, 7)) }
    /// Required write-buffer flushing (RWBF).
    public var requiresWriteBufferFlush: Bool { cap(4) != 0 }
    /// Caching mode (CM): an emulated IOMMU that needs invalidations for not-present entries.
    public var cachingMode: Bool { cap(7) != 0 }
    /// Supported adjusted guest address widths (SAGAW bitmap: bit 1 = 39-bit 3-level, bit 2 = 48-bit, bit 3 = 57-bit).
    public var supportedAGAW: UInt8 { UInt8(cap(8, 0x1f)) }
    /// Maximum guest address width in bits (MGAW).
    public var maxGuestAddressWidth: Int { Int(cap(16, 0x3f)) + 1 }
    /// Zero-length read (ZLR).
    public var zeroLengthRead: Bool { cap(22) != 0 }
    /// Offset of the fault recording registers (FRO * 16).
    public var faultRecordingOffset: Int { Int(cap(24, 0x3ff)) * 16 }
    /// Second-stage large page sizes (SLLPS: bit 0 = 2 MiB, bit 1 = 1 GiB).
    public var secondStageLargePages: UInt8 { UInt8(cap(34, 0xf)) }
    /// Page-selective invalidation (PSI).
    public var pageSelectiveInvalidation: Bool { cap(39) != 0 }
    /// Number of fault recording registers (NFR + 1).
    public var faultRecordingRegisters: Int { Int(cap(40, 0xff)) + 1 }
    /// Maximum address mask value for page-selective invalidation (MAMV).
    public var maxAddressMask: Int { Int(cap(48, 0x3f)) }
    /// Write draining (DWD) and read draining (DRD).
    public var writeDraining: Bool { cap(54) != 0 }
    /// CAP bit 55: read draining.
    public var readDraining: Bool { cap(55) != 0 }
    /// First-stage 1 GiB pages (FS1GP).
    public var firstStage1GiBPages: Bool { cap(56) != 0 }
    /// Posted interrupts (PI).
    public var postedInterrupts: Bool { cap(59) != 0 }
    /// First-stage 5-level paging (FS5LP).
    public var firstStage5LevelPaging: Bool { cap(60) != 0 }

    // ECAP_REG
    /// Page-walk coherency (C).
    public var coherent: Bool { ecap(0) != 0 }
    /// Queued invalidation (QI).
    public var queuedInvalidation: Bool { ecap(1) != 0 }
    /// Device TLB / ATS (DT).
    public var deviceTLB: Bool { ecap(2) != 0 }
    /// Interrupt remapping (IR) and extended interrupt mode / x2APIC (EIM).
    public var interruptRemapping: Bool { ecap(3) != 0 }
    /// ECAP bit 4: extended interrupt mode.
    public var extendedInterruptMode: Bool { ecap(4) != 0 }
    /// Pass-through translation (PT).
    public var passThrough: Bool { ecap(6) != 0 }
    /// Snoop control (SC).
    public var snoopControl: Bool { ecap(7) != 0 }
    /// Nested translation (NEST).
    public var nestedTranslation: Bool { ecap(26) != 0 }
    /// Page requests (PRS), execute requests (ERS), supervisor requests (SRS).
    public var pageRequests: Bool { ecap(29) != 0 }
    /// ECAP bit 30: execute requests.
    public var executeRequests: Bool { ecap(30) != 0 }
    /// ECAP bit 31: supervisor requests.
    public var supervisorRequests: Bool { ecap(31) != 0 }
    /// No write flag (NWFS) and extended accessed flag (EAFS) in first-stage tables.
    public var noWriteFlag: Bool { ecap(33) != 0 }
    /// ECAP bit 34: extended accessed flag.
    public var extendedAccessedFlag: Bool { ecap(34) != 0 }
    /// PASID width in bits (PSS + 1); 0 when PASID is not supported.
    public var pasidBits: Int { pasid ? Int(ecap(35, 0x1f)) + 1 : 0 }
    /// PASID support (PASID).
    public var pasid: Bool { ecap(40) != 0 }
    /// Device-TLB invalidation throttling (DIT) and page-request drain (PDS).
    public var deviceTLBInvalidationThrottle: Bool { ecap(41) != 0 }
    /// ECAP bit 42: page request drain.
    public var pageRequestDrain: Bool { ecap(42) != 0 }
    /// Scalable mode translation (SMTS).
    public var scalableMode: Bool { ecap(43) != 0 }
    /// Second-stage accessed/dirty bits (SSADS): dirty tracking.
    public var secondStageAccessedDirty: Bool { ecap(45) != 0 }
    /// Second-stage translation (SSTS) and first-stage translation (FSTS).
    public var secondStageTranslation: Bool { ecap(46) != 0 }
    /// ECAP bit 47: first stage translation.
    public var firstStageTranslation: Bool { ecap(47) != 0 }
    /// Scalable-mode page-walk coherency (SMPWCS), RID_PASID support (RPS).
    public var scalableModePageWalkCoherency: Bool { ecap(48) != 0 }
    /// ECAP bit 49: rid pasid.
    public var ridPASID: Bool { ecap(49) != 0 }
}

/// ARM SMMUv3 identification registers (SMMU architecture 6.3.1-6.3.6).
public struct ARMSMMUv3Info: Sendable, Equatable {
    /// `IOMMU_HW_INFO_ARM_SMMUV3_*` flags.
    public var flags: UInt32
    /// IDR0..IDR5 (IDR2 and IDR4 are reserved: the kernel reports them as 0).
    public var idr: [UInt32]
    /// The implementation identification register (IIDR).
    public var iidr: UInt32
    /// The architecture identification register (AIDR): the SMMU version.
    public var aidr: UInt32

    @inline(__always) func f(_ r: Int, _ shift: UInt32, _ mask: UInt32 = 1) -> UInt32 {
        r < idr.count ? (idr[r] >> shift) & mask : 0
    }
    /// IDR0: stage 2 (S2P) and stage 1 (S1P) translation.
    public var stage2: Bool { f(0, 0) != 0 }
    /// IDR0 bit 1: stage1.
    public var stage1: Bool { f(0, 1) != 0 }
    /// IDR0.TTF: 1 = AArch32, 2 = AArch64, 3 = both.
    public var translationTableFormats: UInt32 { f(0, 2, 3) }
    /// IDR0.COHACC, BTM, HTTU (1 = access flag, 2 = access + dirty).
    public var coherentAccess: Bool { f(0, 4) != 0 }
    /// IDR0 bit 5: broadcast tlbmaintenance.
    public var broadcastTLBMaintenance: Bool { f(0, 5) != 0 }
    /// IDR0 field at bit 6: hardware table update.
    public var hardwareTableUpdate: UInt32 { f(0, 6, 3) }
    /// IDR0: ATS, ASID16, MSI, PRI, VMID16, CD2L, stall model, stream table levels.
    public var ats: Bool { f(0, 10) != 0 }
    /// IDR0 bit 12: asid16.
    public var asid16: Bool { f(0, 12) != 0 }
    /// IDR0 bit 13: msi.
    public var msi: Bool { f(0, 13) != 0 }
    /// IDR0 bit 16: pri.
    public var pri: Bool { f(0, 16) != 0 }
    /// IDR0 bit 18: vmid16.
    public var vmid16: Bool { f(0, 18) != 0 }
    /// IDR0 bit 19: two level context descriptors.
    public var twoLevelContextDescriptors: Bool { f(0, 19) != 0 }
    /// IDR0 field at bit 24: stall model.
    public var stallModel: UInt32 { f(0, 24, 3) }
    /// IDR0 field at bit 27: stream table levels.
    public var streamTableLevels: UInt32 { f(0, 27, 3) }
    /// IDR1: log2 sizes of StreamID and SubstreamID, and of the command queue.
    public var streamIDBits: Int { Int(f(1, 0, 0x3f)) }
    /// IDR1 field at bit 6: substream idbits.
    public var substreamIDBits: Int { Int(f(1, 6, 0x1f)) }
    /// IDR1 field at bit 21: command queue log2 entries.
    public var commandQueueLog2Entries: Int { Int(f(1, 21, 0x1f)) }
    /// IDR3: range invalidation (RIL), break-before-make level (BBML).
    public var rangeInvalidation: Bool { f(3, 10) != 0 }
    /// IDR3.BBML: the break-before-make level supported.
    public var bbml: UInt32 { f(3, 11, 3) }
    /// IDR5: output address size (OAS: 0 = 32 bits … 6 = 52 bits) and granules.
    public var outputAddressBits: Int { [32, 36, 40, 42, 44, 48, 52, 56][Int(f(5, 0, 7))] }
    /// IDR5 bit 4: granule4 k.
    public var granule4K: Bool { f(5, 4) != 0 }
    /// IDR5 bit 5: granule16 k.
    public var granule16K: Bool { f(5, 5) != 0 }
    /// IDR5 bit 6: granule64 k.
    public var granule64K: Bool { f(5, 6) != 0 }
}

/// NVIDIA Tegra241 CMDQV (an SMMUv3 extension).
public struct Tegra241CMDQVInfo: Sendable, Equatable {
    /// Flags of `struct iommu_hw_info_tegra241_cmdqv`.
    public var flags: UInt32
    /// The CMDQV version.
    public var version: UInt8
    /// log2 of the number of VCMDQs and of virtual stream ids.
    public var log2VCMDQs: UInt8
    /// log2 of the number of virtual stream ids.
    public var log2VSIDs: UInt8
}

/// AMD IOMMU extended feature registers (AMD IOMMU spec 3.4.12, EFR and EFR2).
public struct AMDIOMMUInfo: Sendable, Equatable {
    /// The Extended Feature Register (EFR).
    public var extendedFeatures: UInt64
    /// The second Extended Feature Register (EFR2).
    public var extendedFeatures2: UInt64

    @inline(__always) func f(_ shift: UInt64, _ mask: UInt64 = 1) -> UInt64 { (extendedFeatures >> shift) & mask }
    /// PreF, PPR, x2APIC (XT), NX, GT (guest translation), IA, GA (guest APIC), HE, PC.
    public var prefetch: Bool { f(0) != 0 }
    /// EFR bit 1: page peripheral requests.
    public var pagePeripheralRequests: Bool { f(1) != 0 }
    /// EFR bit 2: x2 apic.
    public var x2APIC: Bool { f(2) != 0 }
    /// EFR bit 3: no execute.
    public var noExecute: Bool { f(3) != 0 }
    /// EFR bit 4: guest translation.
    public var guestTranslation: Bool { f(4) != 0 }
    /// EFR bit 6: invalidate all.
    public var invalidateAll: Bool { f(6) != 0 }
    /// EFR bit 7: guest vapic.
    public var guestVAPIC: Bool { f(7) != 0 }
    /// EFR bit 8: hardware errors.
    public var hardwareErrors: Bool { f(8) != 0 }
    /// EFR bit 9: performance counters.
    public var performanceCounters: Bool { f(9) != 0 }
    /// HATS: host address translation size (0 = 4 levels, 1 = 5 levels, 2 = 6 levels).
    public var hostTranslationLevels: Int { Int(f(10, 3)) + 4 }
    /// GATS: guest address translation size (0 = 4 levels, 1 = 5 levels).
    public var guestTranslationLevels: Int { Int(f(12, 3)) + 4 }
    /// PASmax: PASID width in bits (PASmax + 1).
    public var pasidBits: Int { Int(f(32, 0x1f)) + 1 }
    /// HDSup / HASup: host dirty and access bit support (dirty tracking).
    public var hostDirty: Bool { f(52) != 0 }
    /// EFR bit 49 (HASup): host access bit support.
    public var hostAccess: Bool { (extendedFeatures >> 49) & 1 != 0 }
}

extension IOMMUFD {
    /// The IOMMU facts for bound device `deviceID` (the devid from
    /// `VFIO_DEVICE_BIND_IOMMUFD`, or a mock device's id). `type`, when given,
    /// asks for that vendor's data (`IOMMU_HW_INFO_FLAG_INPUT_TYPE`, Linux 6.17).
    /// The corresponding ioctl is `IOMMU_GET_HW_INFO`.
    public func hardwareInfo(device deviceID: UInt32, type: UInt32? = nil) throws(VFIOError) -> IOMMUHardwareInfo {
        var data = [UInt8](repeating: 0, count: 256)
        var arg = iommu_hw_info.make()
        arg.dev_id = deviceID
        if let type {
            arg.flags = UInt32(IOMMU_HW_INFO_FLAG_INPUT_TYPE.rawValue)
            arg.in_data_type = type
        }
        let r: Result<Void, VFIOError> = data.withUnsafeMutableBytes { raw in
            arg.data_len = UInt32(raw.count)
            arg.data_uptr = UInt64(UInt(bitPattern: raw.baseAddress))
            do throws(VFIOError) { try ioctl(.iommuGetHWInfo, &arg, object: "device \(deviceID)"); return .success(()) }
            catch { return .failure(error) }
        }
        if case .failure(let e) = r {
            throw e.explained { $0.errno == .noSuchFileOrDirectory ? "no bound device has id \(deviceID) in this iommufd" : nil }
        }
        let n = min(Int(arg.data_len), data.count)
        return IOMMUHardwareInfo(dataType: arg.out_data_type, data: Array(data[..<n]),
                                 capabilities: arg.out_capabilities, maxPASIDLog2: arg.out_max_pasid_log2)
    }
}
