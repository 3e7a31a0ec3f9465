import VFIOSystem

/// Whether a group can be handed to VFIO, member by member.
///
/// The kernel's rule (drivers/iommu/iommu.c, `iommu_device_claim_dma_owner`;
/// VFIO's group and cdev paths both use it): every device in the group must be
/// unbound, or bound to a driver that declares `driver_managed_dma` (vfio-pci and
/// its variants, pci-stub, pcieport, ...). One member on an ordinary kernel driver
/// makes the whole group unusable (`EBUSY`).
///
/// JSON keys: `group`, `viable`, `members` (each `address`, `driver`, `status`,
/// `reason`, `bridge`), `blocking` (BDFs), `advice` (in plain words), `remedies`.
public struct GroupViability: Sendable, Equatable, Encodable {
    /// Where one member stands: fine for VFIO, or in the way.
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
        /// Its sysfs entry or driver could not be read: counted as blocking (fail closed).
        case unreadable
    }

    /// One device of the group, with its driver and status.
    public struct Member: Sendable, Equatable, Codable, CustomStringConvertible {
        /// The member's PCI address.
        public var address: PCIAddress
        /// Its driver, or nil when none is bound.
        public var driver: String?
        /// Whether it lets the group be used.
        public var status: MemberStatus
        /// Why the member is fine or not, in words.
        public var reason: String
        /// A PCI bridge: never handed to VFIO, never in its way.
        public var isBridge: Bool = false

        public var description: String {
            status == .unreadable ? "\(address) (unreadable)" : "\(address) (\(driver.map { "driver \($0)" } ?? "no driver"))"
        }

        /// Why this member stops its group, in a few words (`0000:01:02.0 (bound to e1000e)`).
        public var blockingText: String {
            if status == .unreadable { return "\(address) (\(reason))" }
            return "\(address) (\(isBridge ? "a bridge " : "")bound to \(driver ?? "?"))"
        }
    }

    /// The members that stop the group from being used. With `requireVFIO`
    /// (VFIOKit's rule for the group path) members without a driver count too,
    /// bridges excepted: the kernel accepts them, but a kernel driver can claim
    /// an unbound device at any time, so VFIOKit wants every device on vfio-pci.
    public func blockers(requireVFIO: Bool) -> [Member] {
        members.filter { $0.status == .blocking || $0.status == .unreadable || (requireVFIO && $0.status == .unbound && !$0.isBridge) }
    }

    /// The IOMMU group number.
    public var group: Int
    /// Whether VFIO can take the group: no member blocks it.
    public var viable: Bool
    /// Every PCI member, in address order.
    public var members: [Member]
    /// Members that stop the group from being used.
    public var blocking: [PCIAddress]
    /// What makes the group usable, in order (empty when it is viable).
    public var remedies: [Remedy]
    /// Members that are not PCI functions (platform devices), by sysfs name.
    public var otherMembers: [String] = []

    /// What to do, in plain words: the remedies, or why the group is fine.
    public var advice: String {
        if let r = Remedy.describe(remedies) { return r }
        return "every member is unbound, on vfio-pci/pci-stub, or on a driver that manages DMA itself"
            + (otherMembers.isEmpty ? "" : "; non-PCI members: \(otherMembers.joined(separator: ", "))")
    }

    enum CodingKeys: String, CodingKey { case group, viable, members, blocking, advice, remedies }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(group, forKey: .group)
        try c.encode(viable, forKey: .viable)
        try c.encode(members, forKey: .members)
        try c.encode(blocking, forKey: .blocking)
        try c.encode(encoder.remedyWording.words(remedies) ?? advice, forKey: .advice)
        try c.encode(remedies, forKey: .remedies)
    }

    /// One sentence naming the blockers, for errors.
    public var summary: String {
        if viable { return "IOMMU group \(group) is viable (\(members.count) member\(members.count == 1 ? "" : "s"))" }
        var parts: [String] = []
        let names = members.filter { $0.status == .blocking }.map(\.blockingText)
        if !names.isEmpty {
            parts.append(names.joined(separator: ", ") + (names.count == 1 ? " is" : " are") + " still on a kernel driver that does DMA")
        }
        let unread = members.filter { $0.status == .unreadable }
        if !unread.isEmpty {
            parts.append(unread.map(\.blockingText).joined(separator: ", ") + " could not be read, so VFIOKit cannot say the group is safe")
        }
        return "IOMMU group \(group) is not viable: " + parts.joined(separator: "; ")
    }

    /// The steps that make this group usable for `device`, in order: each
    /// bridge on a driver without managed DMA to pci-stub (a bridge never goes
    /// to vfio-pci; pci-stub declares managed DMA, and restoring the bridge's
    /// driver gives it back), then the group's endpoints to vfio-pci. Empty
    /// when a member could not be read (nothing to do until sysfs answers) or
    /// nothing blocks.
    public func fixes(for device: PCIAddress, requireVFIO: Bool = false) -> [Remedy] {
        if members.contains(where: { $0.status == .unreadable }) { return [] }
        var out: [Remedy] = []
        for m in members where m.isBridge && m.status == .blocking {
            out.append(.bindBridgeToStub(m.address, driver: m.driver))
        }
        let endpointBlockers = members.filter {
            !$0.isBridge && $0.address != device && ($0.status == .blocking || (requireVFIO && $0.status == .unbound))
        }
        if !endpointBlockers.isEmpty {
            let target = members.first { $0.address == device && !$0.isBridge }?.address
                ?? members.first { !$0.isBridge }?.address ?? device
            out.append(.bindGroup(target))
        }
        return out
    }
}

/// Drivers known to set `driver_managed_dma`: they coexist with VFIO in a group.
/// vfio-pci and its variants are recognised by ``VFIODrivers/isVFIOPCI(_:)``.
public enum ManagedDMADrivers {
    /// The drivers by name (both spellings where the kernel has two).
    public static let names: Set<String> = [
        "vfio-pci", "pci-stub", "pcieport", "vfio-platform", "vfio-amba", "vfio-fsl-mc", "vfio-cdx",
        "pci_stub",
    ]

    /// Whether `driver` declares managed DMA: a known name or a vfio-pci variant.
    public static func contains(_ driver: String) -> Bool {
        names.contains(driver) || VFIODrivers.isVFIOPCI(driver)
    }
}

extension PCIHost {
    /// Member-by-member viability of a group.
    public func viability(ofGroup id: Int) throws(VFIOError) -> GroupViability {
        let g = try group(id)
        var members: [GroupViability.Member] = []
        for a in g.members {
            // Fail closed: a member whose entry or driver link cannot be read counts as blocking.
            let d: PCIDevice
            let drv: String?
            do throws(VFIOError) {
                d = try device(a)
                drv = try driverLink(of: a)
            } catch {
                members.append(.init(address: a, driver: nil, status: .unreadable,
                                     reason: "could not read it from sysfs: " + error.description, isBridge: false))
                continue
            }
            let status: GroupViability.MemberStatus
            let reason: String
            switch drv {
            case nil:
                status = .unbound; reason = "no driver"
            case VFIODrivers.vfioPCI?:
                status = .vfio; reason = "bound to vfio-pci"
            case let x? where VFIODrivers.isVFIOPCI(x):
                status = .vfio; reason = "bound to \(x), a vfio-pci variant"
            case "pci-stub"?, "pci_stub"?:
                status = .stub; reason = "bound to pci-stub"
            case let x? where ManagedDMADrivers.contains(x):
                status = .managedDMA; reason = "\(x) manages DMA itself (driver_managed_dma)"
            case let x? where d.isBridge:
                status = .blocking; reason = "a bridge bound to \(x), which does not declare managed DMA"
            case let x?:
                status = .blocking; reason = "bound to \(x), which uses the kernel's DMA API"
            }
            members.append(.init(address: a, driver: drv, status: status, reason: reason, isBridge: d.isBridge))
        }
        let blocking = members.filter { $0.status == .blocking || $0.status == .unreadable }.map(\.address)
        var remedies: [Remedy] = []
        if blocking.isEmpty {
            remedies = []
        } else if let bad = members.first(where: { $0.status == .unreadable }) {
            remedies = [.inspect(path: "/sys/bus/pci/devices/\(bad.address)/"),
                        .advice("until then VFIOKit treats the group as not viable")]
        } else {
            let v = GroupViability(group: id, viable: false, members: members, blocking: blocking, remedies: [])
            let target = members.first { !$0.isBridge && $0.status != .blocking }?.address
                ?? members.first { !$0.isBridge }?.address ?? blocking[0]
            remedies = v.fixes(for: target) + [.advice("the IOMMU cannot isolate devices in one group from each other")]
        }
        return GroupViability(group: id, viable: blocking.isEmpty, members: members, blocking: blocking, remedies: remedies,
                              otherMembers: g.otherMembers)
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

/// How close a device is to being usable through VFIO, in one word.
/// Every word that promises a fix has it in ``PCIHost/readinessRemedies(of:_:)``:
/// the steps, in order (a front end prints them as its commands).
public enum VFIOReadiness: String, Sendable, Codable, CaseIterable {
    /// On vfio-pci, every other member of its group is fine, and no process holds the group.
    case ready
    /// On vfio-pci and usable, but a VFIO node of its group (its own or a group
    /// mate's cdev, or the group node) is open in a process: that process owns the group.
    case held
    /// On vfio-pci, but another group member is on a kernel driver that does DMA.
    case groupNotViable = "group-not-viable"
    /// Not on vfio-pci; binding it to vfio-pci would work.
    case bindable
    /// Not on vfio-pci; another endpoint of the group blocks: bind the whole group.
    case bindableWithGroup = "needs-group"
    /// A bridge of the group is on a driver without managed DMA (shpchp, say): it
    /// goes to pci-stub first (``Remedy/bindBridgeToStub(_:driver:)``).
    case needsBridgeStub = "needs-bridge-stub"
    /// Not on vfio-pci, and its kernel driver is in use (mounted, up).
    case inUse = "in-use"
    /// In no IOMMU group: VFIO cannot use it.
    case noIOMMUGroup = "no-iommu-group"
    /// A bridge: never handed to VFIO.
    case bridge
    /// A member of its group could not be read from sysfs: VFIOKit cannot say it is safe.
    case groupUnreadable = "group-unreadable"
}

extension PCIHost {
    /// One word for how usable `dev` is through VFIO. Checks device users
    /// (`uses(of:)`) only for devices on a kernel driver.
    public func readiness(of dev: PCIDevice) -> VFIOReadiness {
        readiness(of: dev, openNodes: [:])
    }

    /// ``readiness(of:)`` that also counts device nodes open in processes, from
    /// a table made once by ``openDeviceNodes()``.
    public func readiness(of dev: PCIDevice, openNodes: [String: [String]]) -> VFIOReadiness {
        if dev.isBridge || dev.classCode >> 16 == 0x06 { return .bridge }
        guard let g = dev.iommuGroup else { return .noIOMMUGroup }
        guard let v = try? viability(ofGroup: g), !v.members.contains(where: { $0.status == .unreadable }) else {
            return .groupUnreadable
        }
        let others = v.members.filter { $0.address != dev.address && $0.status == .blocking }
        if dev.isBoundToVFIO {
            if !others.isEmpty { return .groupNotViable }
            return groupVFIONodes(v).contains { openNodes[$0] != nil } ? .held : .ready
        }
        if dev.driver != nil && !uses(of: dev.address, openNodes: openNodes).isEmpty { return .inUse }
        if others.contains(where: \.isBridge) { return .needsBridgeStub }
        return others.isEmpty ? .bindable : .bindableWithGroup
    }

    /// The steps that make `dev` ready from `readiness`, in order; empty when
    /// the word promises none (ready, held, in-use, bridge, no-iommu-group,
    /// group-unreadable: the device's group, users and holders say why).
    public func readinessRemedies(of dev: PCIDevice, _ readiness: VFIOReadiness) -> [Remedy] {
        switch readiness {
        case .bindable: return [.bindToVFIO(dev.address)]
        case .bindableWithGroup: return [.bindGroup(dev.address)]
        case .needsBridgeStub, .groupNotViable:
            guard let g = dev.iommuGroup, let v = try? viability(ofGroup: g) else { return [] }
            var steps = v.fixes(for: dev.address)
            if !dev.isBoundToVFIO && !steps.contains(where: { $0.kind == .bindGroup }) { steps.append(.bindToVFIO(dev.address)) }
            return steps
        case .ready, .held, .inUse, .noIOMMUGroup, .bridge, .groupUnreadable: return []
        }
    }

    /// The VFIO nodes of a group: `/dev/vfio/N` and every member's cdev.
    func groupVFIONodes(_ v: GroupViability) -> [String] {
        var nodes = ["/dev/vfio/\(v.group)"]
        for m in v.members { if let c = (try? device(m.address))?.vfioCdevPath { nodes.append(c) } }
        return nodes
    }
}
