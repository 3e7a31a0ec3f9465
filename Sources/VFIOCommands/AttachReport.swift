import VFIOKit

extension AttachSession {
    /// What was set up, for the text and JSON report.
    func report() throws(VFIOError) -> AttachReport {
        var r = AttachReport(mode: plan.container ? "container" : "iommufd")
        if case .exec = plan.mode, !plan.container { r.handoff = plan.bind ? "prebound" : "unbound" }
        if let iommufd { r.iommufd = .init(fd: iommufd.fd.numberForHandoff) }
        if let ioas {
            let ranges = try ioas.iovaRanges()
            r.ioas = .init(id: ioas.objectID, created: ioas.isOwned,
                           iovaRanges: ranges.ranges.map(AttachReport.Range.init),
                           iovaAlignment: ranges.alignment)
        }
        if let hwpt { r.hwpt = .init(id: hwpt.objectID, flags: HWPTRequest.flagNames(hwpt.flags)) }
        if let c = vfioContainer {
            let info = try c.info()
            r.container = .init(fd: c.fd.numberForHandoff, iommuType: c.type?.description ?? "none",
                                iovaRanges: (info.iovaRanges ?? []).map(AttachReport.Range.init),
                                pageSizes: info.pageSizes)
            r.groups = groups.map { .init(number: $0.number, fd: $0.fd.numberForHandoff) }
        }
        r.devices = devices.map {
            .init(address: $0.address.description, cdev: $0.cdev, fd: $0.device.fd.numberForHandoff, deviceID: $0.deviceID,
                  attachedID: $0.attachedID, hwInfo: $0.hwInfo.map(HWInfoReport.init))
        }
        r.mappings = mappings.map { .init(iova: $0.iova.rawValue, length: $0.length, backing: $0.backing.rawValue) }
            + barMappings.map { .init(iova: $0.iova.rawValue, length: $0.length, backing: "bar \($0.request.device)/\($0.request.bar)"
                                    + ($0.request.offset == 0 ? "" : "+0x\(String($0.request.offset, radix: 16))")) }
        r.cacheCoherency = cacheCoherency()
        return r
    }

    /// VFIO_DMA_CC_IOMMU for what was attached: the container's domains, or
    /// the HWPTs on the IOAS (through iommufd's compat check). Unknown, with
    /// the reason, when nothing is attached or the kernel would not say.
    func cacheCoherency() -> CacheCoherency {
        do throws(VFIOError) {
            if let c = vfioContainer { return try c.cacheCoherency() }
            guard let ioas else { return .unknown("no IOAS") }
            guard devices.contains(where: { $0.attachedID != nil }) else {
                return .unknown("no device is attached (--exec hands the devices over unbound; the program attaches them)")
            }
            if inheritedIOMMUFD != nil {
                // Asking sets the context's compat IOAS for a moment; in a shared context that is another process's too.
                return .unknown("the iommufd is shared (--iommufd): vfioctl does not touch its compat IOAS to ask")
            }
            return try ioas.cacheCoherency()
        } catch {
            return .unknown(CLIWording.message(error))
        }
    }
}

/// What `vfioctl attach` reports; the JSON keys are documented in its help.
struct AttachReport: Encodable {
    struct Range: Encodable {
        var start: UInt64
        var last: UInt64
        init(_ r: ClosedRange<IOVA>) {
            start = r.lowerBound.rawValue
            last = r.upperBound.rawValue
        }
        var iovas: ClosedRange<IOVA> { IOVA(start)...IOVA(last) }
    }
    struct FD: Encodable { var fd: Int32 }
    struct IOASInfo: Encodable {
        var id: UInt32
        var created: Bool
        var iovaRanges: [Range]
        var iovaAlignment: UInt64
        enum CodingKeys: String, CodingKey { case id, created, iovaRanges = "iova_ranges", iovaAlignment = "iova_alignment" }
    }
    struct HWPTInfo: Encodable { var id: UInt32; var flags: [String] }
    struct ContainerInfo: Encodable {
        var fd: Int32
        var iommuType: String
        var iovaRanges: [Range]
        var pageSizes: UInt64?
        enum CodingKeys: String, CodingKey { case fd, iommuType = "iommu_type", iovaRanges = "iova_ranges", pageSizes = "page_sizes" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(fd, forKey: .fd)
            try c.encode(iommuType, forKey: .iommuType)
            try c.encode(iovaRanges, forKey: .iovaRanges)
            try c.encode(pageSizes, forKey: .pageSizes)
        }
    }
    struct Group: Encodable { var number: Int; var fd: Int32 }
    struct DeviceInfo: Encodable {
        var address: String
        var cdev: String?
        var fd: Int32
        var deviceID: UInt32?
        var attachedID: UInt32?
        var hwInfo: HWInfoReport?
        enum CodingKeys: String, CodingKey {
            case address, cdev, fd
            case deviceID = "device_id", attachedID = "attached_id", hwInfo = "hw_info"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(address, forKey: .address)
            try c.encode(cdev, forKey: .cdev)
            try c.encode(fd, forKey: .fd)
            try c.encode(deviceID, forKey: .deviceID)
            try c.encode(attachedID, forKey: .attachedID)
            try c.encode(hwInfo, forKey: .hwInfo)
        }
    }
    struct Mapping: Encodable { var iova: UInt64; var length: UInt64; var backing: String }

    var mode: String
    var handoff: String?
    var iommufd: FD?
    var ioas: IOASInfo?
    var hwpt: HWPTInfo?
    var container: ContainerInfo?
    var groups: [Group] = []
    var devices: [DeviceInfo] = []
    var mappings: [Mapping] = []
    var cacheCoherency: CacheCoherency?

    init(mode: String) { self.mode = mode }

    enum CodingKeys: String, CodingKey {
        case mode, handoff, iommufd, ioas, hwpt, container, groups, devices, mappings
        case cacheCoherency = "cache_coherency"
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(mode, forKey: .mode)
        try c.encode(handoff, forKey: .handoff)
        try c.encode(iommufd, forKey: .iommufd)
        try c.encode(ioas, forKey: .ioas)
        try c.encode(hwpt, forKey: .hwpt)
        try c.encode(container, forKey: .container)
        try c.encode(groups, forKey: .groups)
        try c.encode(devices, forKey: .devices)
        try c.encode(mappings, forKey: .mappings)
        try c.encode(cacheCoherency, forKey: .cacheCoherency)
    }

    static func rangesText(_ ranges: [ClosedRange<IOVA>]) -> String {
        ranges.isEmpty ? "none" : ranges.map(\.hexDescription).joined(separator: ", ")
    }

    func textLines() -> [String] {
        var rows: [[String]] = []
        if let iommufd { rows.append(["iommufd", "/dev/iommu (fd \(iommufd.fd))"]) }
        if let ioas {
            rows.append(["IOAS", "\(ioas.id)" + (ioas.created ? " (new)" : " (existing)")])
        }
        if let hwpt { rows.append(["HWPT", "\(hwpt.id)" + (hwpt.flags.isEmpty ? " (paging)" : " (" + hwpt.flags.joined(separator: ", ") + ")")]) }
        if let ioas {
            rows.append(["IOVA ranges", AttachReport.rangesText(ioas.iovaRanges.map(\.iovas))])
            rows.append(["IOVA alignment", formatBytes(ioas.iovaAlignment)])
        }
        if let c = container {
            rows.append(["container", "/dev/vfio/vfio (fd \(c.fd)), \(c.iommuType)"])
            rows.append(["groups", groups.map { "/dev/vfio/\($0.number) (fd \($0.fd))" }.joined(separator: ", ")])
            rows.append(["IOVA ranges", AttachReport.rangesText(c.iovaRanges.map(\.iovas))])
            if let p = c.pageSizes {
                rows.append(["page sizes", (0..<64).filter { p & (1 << UInt64($0)) != 0 }.map { formatBytes(1 << UInt64($0)) }.joined(separator: ", ")])
            }
        }
        if let cc = cacheCoherency { rows.append(["cache coherency", cc.text]) }
        if let handoff {
            rows.append(["handoff", handoff == "unbound" ? "device fds unbound (the program binds them)" : "devices bound and attached"])
        }
        var out = table(["", ""], rows).split(separator: "\n").dropFirst().map(String.init)
        out.append("")
        out.append(contentsOf: table(["DEVICE", "NODE", "FD", "DEVID", "ATTACHED TO"], devices.map {
            [$0.address, $0.cdev ?? "group", "\($0.fd)", $0.deviceID.map(String.init) ?? "-",
             $0.attachedID.map { id in
                 id == ioas?.id ? "IOAS \(id) (emulated: the driver's access)"
                     : "HWPT \(id)" + (id == hwpt?.id ? "" : " (the kernel's, on IOAS \(ioas?.id ?? 0))")
             } ?? (mode == "container" ? "container" : "not attached")]
        }).split(separator: "\n").map(String.init))
        for d in devices {
            guard let h = d.hwInfo else { continue }
            out.append("")
            out.append("IOMMU behind \(d.address):")
            out.append(contentsOf: h.textLines().map { "  " + $0 })
        }
        out.append("")
        if mappings.isEmpty {
            out.append("mappings: none (--map SIZE[@IOVA] and --map-bar BDF/BAR,SIZE[@IOVA] add some)")
        } else {
            out.append(contentsOf: table(["IOVA", "LAST", "LENGTH", "BACKING"], mappings.map {
                ["0x" + String($0.iova, radix: 16), "0x" + String($0.iova + $0.length - 1, radix: 16), formatBytes($0.length), $0.backing]
            }).split(separator: "\n").map(String.init))
        }
        return out
    }
}
