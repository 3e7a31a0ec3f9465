/// Whether a group can be handed to VFIO, member by member.
///
/// The kernel's rule (drivers/iommu/iommu.c, `iommu_device_claim_dma_owner`;
/// VFIO's group and cdev paths both use it): every device in the group must be
/// unbound, or bound to a driver that declares `driver_managed_dma` (vfio-pci and
/// its variants, pci-stub, pcieport, ...). One member on an ordinary kernel driver
/// makes the whole group unusable (`EBUSY`).
///
/// JSON keys: `group`, `viable`, `members` (each `address`, `driver`, `status`,
/// `reason`, `bridge`), `blocking` (BDFs), `advice`.
public struct GroupViability: Sendable, Equatable, Codable {
    public enum MemberStatus: String, Sendable, Codable {
        /// Bound to vfio-pci (or a vfio-pci variant): fine.
        case vfio
        /// Bound to pci-stub: fine.
        case stub
        /// No driver: fine.
        case unbound
        /// A bridge or other device whose driver manages DMA itself (pcieport): fine.
        case managedDMA = "managed-dma"
        /// Bound to an ordinary kernel driver: makes the group not viable.
        case blocking
    }

    public struct Member: Sendable, Equatable, Codable, CustomStringConvertible {
        public var address: PCIAddress
        public var driver: String?
        public var status: MemberStatus
        /// Why the member is fine or not, in words.
        public var reason: String
        /// A PCI bridge: never handed to VFIO, never in its way.
        public var isBridge: Bool = false

        public var description: String { "\(address) (\(driver.map { "driver \($0)" } ?? "no driver"))" }
    }

    /// The members that stop the group from being used. With `requireVFIO`
    /// (VFIOKit's rule for the group path) members without a driver count too,
    /// bridges excepted: the kernel accepts them, but a kernel driver can claim
    /// an unbound device at any time, so VFIOKit wants every device on vfio-pci.
    public func blockers(requireVFIO: Bool) -> [Member] {
        members.filter { $0.status == .blocking || (requireVFIO && $0.status == .unbound && !$0.isBridge) }
    }

    public var group: Int
    public var viable: Bool
    public var members: [Member]
    /// Members that stop the group from being used.
    public var blocking: [PCIAddress]
    /// What to do, in one or two sentences.
    public var advice: String

    /// One sentence naming the blockers, for errors.
    public var summary: String {
        if viable { return "IOMMU group \(group) is viable (\(members.count) member\(members.count == 1 ? "" : "s"))" }
        let names = members.filter { $0.status == .blocking }.map { "\($0.address) (bound to \($0.driver ?? "?"))" }
        return "IOMMU group \(group) is not viable: " + names.joined(separator: ", ")
            + (names.count == 1 ? " is" : " are") + " still on a kernel driver"
    }
}

/// Drivers known to set `driver_managed_dma`: they coexist with VFIO in a group.
/// vfio-pci variants (`*-vfio-pci`) are recognised by name.
public enum ManagedDMADrivers {
    public static let names: Set<String> = [
        "vfio-pci", "pci-stub", "pcieport", "vfio-platform", "vfio-amba", "vfio-fsl-mc", "vfio-cdx",
        "pci_stub",
    ]

    public static func contains(_ driver: String) -> Bool {
        names.contains(driver) || driver.hasSuffix("-vfio-pci") || driver.hasSuffix("_vfio_pci")
    }
}

extension PCIHost {
    /// Member-by-member viability of a group.
    public func viability(ofGroup id: Int) throws(VFIOError) -> GroupViability {
        let g = try group(id)
        var members: [GroupViability.Member] = []
        for a in g.members {
            let d = try? device(a)
            let drv = d?.driver
            let status: GroupViability.MemberStatus
            let reason: String
            switch drv {
            case nil:
                status = .unbound; reason = "no driver"
            case "vfio-pci"?:
                status = .vfio; reason = "bound to vfio-pci"
            case let x? where x.hasSuffix("vfio-pci") || x.hasSuffix("vfio_pci"):
                status = .vfio; reason = "bound to \(x), a vfio-pci variant"
            case "pci-stub"?, "pci_stub"?:
                status = .stub; reason = "bound to pci-stub"
            case let x? where ManagedDMADrivers.contains(x):
                status = .managedDMA; reason = "\(x) manages DMA itself (driver_managed_dma)"
            case let x?:
                status = .blocking; reason = "bound to \(x), which uses the kernel's DMA API"
            }
            members.append(.init(address: a, driver: drv, status: status, reason: reason, isBridge: d?.isBridge ?? false))
        }
        let blocking = members.filter { $0.status == .blocking }.map(\.address)
        var advice: String
        if blocking.isEmpty {
            advice = "every member is unbound, on vfio-pci/pci-stub, or on a driver that manages DMA itself"
            if !g.otherMembers.isEmpty { advice += "; non-PCI members: \(g.otherMembers.joined(separator: ", "))" }
        } else {
            advice = "bind every member to vfio-pci (`vfioctl bind \(blocking[0]) --group`) or unbind "
                + blocking.map(\.description).joined(separator: ", ")
                + "; the IOMMU cannot isolate devices in one group from each other"
        }
        return GroupViability(group: id, viable: blocking.isEmpty, members: members, blocking: blocking, advice: advice)
    }

    /// Viability of the group `a` is in; throws when it has none.
    public func viability(of a: PCIAddress) throws(VFIOError) -> GroupViability {
        let d = try device(a)
        guard let g = d.iommuGroup else { throw noGroupError(a) }
        return try viability(ofGroup: g)
    }
}

extension GroupViability.Member {
    enum CodingKeys: String, CodingKey { case address, driver, status, reason, isBridge = "bridge" }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(address, forKey: .address)
        try c.encode(driver, forKey: .driver)
        try c.encode(status, forKey: .status)
        try c.encode(reason, forKey: .reason)
        try c.encode(isBridge, forKey: .isBridge)
    }
}

/// How close a device is to being usable through VFIO, in one word for `vfioctl list`.
public enum VFIOReadiness: String, Sendable, Codable {
    /// On vfio-pci, and every other member of its group is fine.
    case ready
    /// On vfio-pci, but another group member is on a kernel driver.
    case groupNotViable = "group-not-viable"
    /// Not on vfio-pci; `vfioctl bind` would work.
    case bindable
    /// Not on vfio-pci; another group member blocks (`vfioctl bind --group`).
    case bindableWithGroup = "needs-group"
    /// Not on vfio-pci, and its kernel driver is in use (mounted, up).
    case inUse = "in-use"
    /// In no IOMMU group: VFIO cannot use it.
    case noIOMMUGroup = "no-iommu-group"
    /// A bridge: never handed to VFIO, and never in the way.
    case bridge
}

extension PCIHost {
    /// One word for how usable `dev` is through VFIO. Checks device users
    /// (``uses(of:)``) only for devices on a kernel driver.
    public func readiness(of dev: PCIDevice) -> VFIOReadiness {
        readiness(of: dev, openNodes: [:])
    }

    /// ``readiness(of:)`` that also counts device nodes open in processes, from
    /// a table made once by ``openDeviceNodes()``.
    public func readiness(of dev: PCIDevice, openNodes: [String: [String]]) -> VFIOReadiness {
        if dev.isBridge || dev.classCode >> 16 == 0x06 { return .bridge }
        guard let g = dev.iommuGroup else { return .noIOMMUGroup }
        let others = (try? viability(ofGroup: g))?.members.filter { $0.address != dev.address && $0.status == .blocking } ?? []
        if dev.isBoundToVFIO { return others.isEmpty ? .ready : .groupNotViable }
        if dev.driver != nil && !uses(of: dev.address, openNodes: openNodes).isEmpty { return .inUse }
        return others.isEmpty ? .bindable : .bindableWithGroup
    }
}
