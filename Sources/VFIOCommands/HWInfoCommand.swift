import ArgumentParser
import Foundation
import VFIOKit

/// `vfioctl hw-info BDF [--json]`.
public struct HWInfoCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "hw-info",
        abstract: "Show what the IOMMU behind a device reports (IOMMU_GET_HW_INFO), decoded.",
        discussion: """
            Opens the device's VFIO cdev, binds it to a new iommufd context and asks \
            IOMMU_GET_HW_INFO: the IOMMU type, generic capabilities (dirty tracking, PASID \
            execute/privileged, ATS not supported), the PASID width, and the vendor \
            registers decoded (Intel VT-d CAP/ECAP, AMD EFR/EFR2, ARM SMMUv3 IDR0-5). The \
            device must be bound to vfio-pci and not be open elsewhere.

            JSON (--json): {"address", "device_id", "hw_info": HWINFO} where HWINFO has \
            type (none, intel-vtd, amd, arm-smmuv3, tegra241-cmdqv, selftest, unknown), \
            data_type (the kernel's number), capabilities (names), max_pasid_log2, \
            pasid_count, and vendor: an object of decoded fields (registers as hex strings).

            Examples:
              vfioctl hw-info 0000:00:03.0
              vfioctl hw-info 00:03.0 --json
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateAddress(address) }

    public func run() throws {
        try reporting(json: output.json) { () throws(VFIOError) in
            let opened = try AttachedDevice.forCommand(address, host: hostOptions.host, mode: .iommufd)
            let devid = opened.device.deviceID ?? 0
            let info = try opened.device.boundIOMMUFD!.hardwareInfo(device: devid)
            try opened.close()
            let report = HWInfoReport(info)
            if output.json {
                struct Out: Encodable {
                    var address: String
                    var deviceID: UInt32
                    var hwInfo: HWInfoReport
                    enum CodingKeys: String, CodingKey { case address, deviceID = "device_id", hwInfo = "hw_info" }
                }
                CommandOutput.out(JSON.render(Out(address: opened.name.description, deviceID: devid, hwInfo: report)))
                return
            }
            CommandOutput.out("\(opened.name): IOMMU behind it (iommufd device id \(devid))")
            for l in report.textLines() { CommandOutput.out("  " + l) }
        }
    }
}

/// A JSON scalar for the vendor fields.
enum JSONScalar: Encodable, Equatable {
    case string(String), int(Int), bool(Bool)
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .int(let i): try c.encode(i)
        case .bool(let b): try c.encode(b)
        }
    }
    var text: String {
        switch self {
        case .string(let s): s
        case .int(let i): String(i)
        case .bool(let b): b ? "yes" : "no"
        }
    }
}

/// `IOMMUHardwareInfo` for people and for JSON.
struct HWInfoReport: Encodable {
    var type: String
    var dataType: UInt32
    var capabilities: [String]
    var maxPASIDLog2: UInt8
    var pasidCount: UInt64
    /// Decoded vendor fields, in a stable order for text.
    var vendorFields: [(String, JSONScalar)]

    enum CodingKeys: String, CodingKey {
        case type, capabilities, vendor
        case dataType = "data_type", maxPASIDLog2 = "max_pasid_log2", pasidCount = "pasid_count"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(dataType, forKey: .dataType)
        try c.encode(capabilities, forKey: .capabilities)
        try c.encode(maxPASIDLog2, forKey: .maxPASIDLog2)
        try c.encode(pasidCount, forKey: .pasidCount)
        try c.encode(Dictionary(uniqueKeysWithValues: vendorFields), forKey: .vendor)
    }

    static let capabilityNames: [(String, IOMMUHardwareInfo.Capabilities)] = [
        ("dirty-tracking", .dirtyTracking), ("pci-pasid-exec", .pciPASIDExecute),
        ("pci-pasid-priv", .pciPASIDPrivileged), ("pci-ats-not-supported", .pciATSNotSupported),
    ]

    init(_ info: IOMMUHardwareInfo) {
        dataType = info.dataType
        capabilities = HWInfoReport.capabilityNames.filter { info.capabilities.contains($0.1) }.map(\.0)
        maxPASIDLog2 = info.maxPASIDLog2
        pasidCount = info.pasidCount
        func h(_ v: some BinaryInteger) -> JSONScalar { .string("0x" + String(v, radix: 16)) }
        switch info.vendor {
        case .none:
            type = "none"
            vendorFields = []
        case .intelVTd(let v):
            type = "intel-vtd"
            vendorFields = [
                ("cap_reg", h(v.capability)), ("ecap_reg", h(v.extendedCapability)), ("flags", h(v.flags)),
                ("max_guest_address_width", .int(v.maxGuestAddressWidth)),
                ("supported_agaw", h(v.supportedAGAW)),
                ("domains", .int(Int(v.domainCount))),
                ("caching_mode", .bool(v.cachingMode)),
                ("second_stage_large_pages", h(v.secondStageLargePages)),
                ("interrupt_remapping", .bool(v.interruptRemapping)),
                ("queued_invalidation", .bool(v.queuedInvalidation)),
                ("pass_through", .bool(v.passThrough)), ("snoop_control", .bool(v.snoopControl)),
                ("scalable_mode", .bool(v.scalableMode)),
                ("nested_translation", .bool(v.nestedTranslation)),
                ("first_stage_translation", .bool(v.firstStageTranslation)),
                ("second_stage_translation", .bool(v.secondStageTranslation)),
                ("second_stage_dirty", .bool(v.secondStageAccessedDirty)),
                ("pasid_bits", .int(v.pasidBits)), ("page_requests", .bool(v.pageRequests)),
                ("device_tlb", .bool(v.deviceTLB)), ("errata_772415_spr17", .bool(v.hasErrata772415SPR17)),
            ]
        case .armSMMUv3(let v):
            type = "arm-smmuv3"
            vendorFields = (0..<v.idr.count).map { ("idr\($0)", h(v.idr[$0])) } + [
                ("iidr", h(v.iidr)), ("aidr", h(v.aidr)), ("flags", h(v.flags)),
                ("stage1", .bool(v.stage1)), ("stage2", .bool(v.stage2)), ("ats", .bool(v.ats)),
                ("pri", .bool(v.pri)), ("hardware_table_update", .int(Int(v.hardwareTableUpdate))),
                ("output_address_bits", .int(v.outputAddressBits)), ("substream_id_bits", .int(v.substreamIDBits)),
                ("granule_4k", .bool(v.granule4K)), ("granule_16k", .bool(v.granule16K)), ("granule_64k", .bool(v.granule64K)),
            ]
        case .tegra241CMDQV(let v):
            type = "tegra241-cmdqv"
            vendorFields = [("flags", h(v.flags)), ("version", .int(Int(v.version))),
                            ("log2_vcmdqs", .int(Int(v.log2VCMDQs))), ("log2_vsids", .int(Int(v.log2VSIDs)))]
        case .amd(let v):
            type = "amd"
            vendorFields = [
                ("efr", h(v.extendedFeatures)), ("efr2", h(v.extendedFeatures2)),
                ("guest_translation", .bool(v.guestTranslation)), ("host_dirty", .bool(v.hostDirty)),
                ("host_access", .bool(v.hostAccess)), ("x2apic", .bool(v.x2APIC)),
                ("page_peripheral_requests", .bool(v.pagePeripheralRequests)),
                ("host_translation_levels", .int(v.hostTranslationLevels)),
                ("guest_translation_levels", .int(v.guestTranslationLevels)), ("pasid_bits", .int(v.pasidBits)),
            ]
        case .selftest(let flags, let reg):
            type = "selftest"
            vendorFields = [("flags", h(flags)), ("test_register", h(reg))]
        case .unknown(let t, let data):
            type = "unknown"
            vendorFields = [("type", .int(Int(t))), ("data", .string(data.map { String(format: "%02x", $0) }.joined()))]
        }
    }

    var typeName: String {
        switch type {
        case "intel-vtd": "Intel VT-d"
        case "amd": "AMD-Vi"
        case "arm-smmuv3": "ARM SMMUv3"
        case "tegra241-cmdqv": "NVIDIA Tegra241 CMDQV"
        case "selftest": "iommufd selftest mock IOMMU"
        case "none": "no vendor data"
        default: "unknown type \(dataType)"
        }
    }

    func textLines() -> [String] {
        var out = [
            "type          \(typeName) (IOMMU_HW_INFO_TYPE \(dataType))",
            "capabilities  " + (capabilities.isEmpty ? "none" : capabilities.joined(separator: ", ")),
            "PASID         " + (maxPASIDLog2 == 0 ? "not supported" : "\(pasidCount) (\(maxPASIDLog2) bits)"),
        ]
        if !vendorFields.isEmpty {
            let w = vendorFields.map(\.0.count).max() ?? 0
            out.append("vendor:")
            for (k, v) in vendorFields {
                out.append("  " + k.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + v.text)
            }
        }
        return out
    }
}
