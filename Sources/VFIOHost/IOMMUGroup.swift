import VFIOSystem

/// An IOMMU group: the smallest set of devices the IOMMU can isolate from each other.
///
/// VFIO hands out a group (or a device in it) only when every member is safe:
/// see ``PCIHost/viability(ofGroup:)``. JSON keys: `id`, `type` (the default
/// domain type: `DMA`, `DMA-FQ`, `identity`, `blocked`, or null), `members` (BDFs;
/// non-PCI members keep their sysfs names).
public struct IOMMUGroup: Sendable, Equatable, Codable {
    /// The group number: `N` of `/sys/kernel/iommu_groups/N` and `/dev/vfio/N`.
    public var id: Int
    /// The group's default domain type (`/sys/kernel/iommu_groups/N/type`).
    public var type: String?
    /// PCI members, in address order.
    public var members: [PCIAddress]
    /// Members that are not PCI functions (platform devices), by sysfs name.
    public var otherMembers: [String]

    /// A group with these members (sysfs reads make them: ``PCIHost/group(_:)``).
    public init(id: Int, type: String? = nil, members: [PCIAddress], otherMembers: [String] = []) {
        self.id = id
        self.type = type
        self.members = members
        self.otherMembers = otherMembers
    }

    enum CodingKeys: String, CodingKey {
        case id, type, members
        case otherMembers = "other_members"
    }
}

/// One IOMMU the kernel registered (`/sys/class/iommu/NAME`).
///
/// JSON keys: `name`, `kind` (`intel-vtd`, `amd-vi`, `virtio-iommu`, `selftest`,
/// `other`), `supports_interrupt_remapping` (true/false from the hardware
/// capability registers, null when they say nothing).
public struct IOMMUInstance: Sendable, Equatable, Codable {
    /// The IOMMU's hardware (from its sysfs class entry).
    public enum Kind: String, Sendable, Codable {
        /// Intel VT-d (`dmar*`).
        case intelVTd = "intel-vtd"
        /// AMD-Vi (`ivhd*`).
        case amdVi = "amd-vi"
        /// virtio-iommu (no interrupt remapping).
        case virtio = "virtio-iommu"
        /// iommufd's selftest mock IOMMU (`CONFIG_IOMMUFD_TEST`).
        case selftest
        /// Any other IOMMU (SMMUv3, ...).
        case other
    }
    /// Its name in `/sys/class/iommu` (`dmar0`, `ivhd0`, ...).
    public var name: String
    /// Which IOMMU it is.
    public var kind: Kind
    /// For VT-d: ECAP.IR (bit 3). For AMD-Vi: the IVHD reports it through EFR; unknown (nil)
    /// unless the kernel exposes it. virtio-iommu: always false.
    public var supportsInterruptRemapping: Bool?

    enum CodingKeys: String, CodingKey {
        case name, kind
        case supportsInterruptRemapping = "supports_interrupt_remapping"
    }
}

/// Whether MSIs are isolated by interrupt remapping, and how VFIOKit knows.
///
/// JSON keys: `state` (`enabled`, `disabled`, `unknown`), `evidence` (one sentence).
///
/// The signal: with interrupt remapping on (Intel or AMD), x86 IO-APIC and MSI
/// interrupts go through the remapping irqchips, whose names start with `IR-`
/// (`IR-IO-APIC`, `IR-PCI-MSI-…`) in `/proc/interrupts`; without it they are
/// `IO-APIC` / `PCI-MSI`. The IO-APIC always has a line in use (timer, serial,
/// ACPI SCI), so the absence of every `IR-` chip next to a plain `IO-APIC` line
/// means remapping is off. virtio-iommu never remaps interrupts. When neither
/// signal exists (no IO-APIC lines), the state is `unknown`.
public struct InterruptRemapping: Sendable, Equatable, Codable {
    /// Whether interrupts are remapped: `enabled`, `disabled`, or `unknown` (no signal).
    public enum State: String, Sendable, Codable {
        /// Interrupts go through the remapping irqchips (`IR-` in `/proc/interrupts`).
        case enabled
        /// They do not: MSIs are not isolated.
        case disabled
        /// No signal either way.
        case unknown
    }
    /// Whether interrupts are remapped.
    public var state: State
    /// What the state was read from, in one sentence.
    public var evidence: String
}

extension PCIHost {
    static let groupsDir = "/sys/kernel/iommu_groups"

    /// Every IOMMU group, by number.
    public func groups() -> [IOMMUGroup] {
        list(Self.groupsDir).compactMap { Int($0) }.sorted().compactMap { try? group($0) }
    }

    /// One group and its members.
    public func group(_ id: Int) throws(VFIOError) -> IOMMUGroup {
        let dir = Self.groupsDir + "/\(id)"
        guard exists(dir) else {
            throw .invalid(.step(.findIOMMUGroup), "IOMMU group \(id) does not exist (\(dir))", object: "group \(id)",
                           remedies: [.listGroups])
        }
        var pci: [PCIAddress] = []
        var other: [String] = []
        for name in list(dir + "/devices") {
            if let a = try? PCIAddress(parsing: name), name.count >= 12 { pci.append(a) } else { other.append(name) }
        }
        return IOMMUGroup(id: id, type: readTrimmed(dir + "/type"), members: pci.sorted(), otherMembers: other)
    }

    /// The group a device belongs to; throws with the reason when it has none.
    public func group(of a: PCIAddress) throws(VFIOError) -> IOMMUGroup {
        let dev = try device(a)
        guard let g = dev.iommuGroup else { throw noGroupError(a) }
        return try group(g)
    }

    package func noGroupError(_ a: PCIAddress) -> VFIOError {
        let real = iommus().filter { $0.kind != .selftest }
        let anyGroups = !list(Self.groupsDir).isEmpty
        let why: String
        let remedies: [Remedy]
        if real.isEmpty {
            why = ": this kernel has no IOMMU enabled"
            remedies = [.enableIOMMU, .diagnose(nil)]
        } else if !anyGroups {
            why = ": \(real.map(\.name).joined(separator: ", ")) is registered but no device is in any IOMMU group"
            remedies = [.advice("the IOMMU covers no device"), .readKernelLog(matching: ["iommu"]), .diagnose(nil)]
        } else {
            why = ""
            remedies = [.advice("the IOMMU does not translate this device (it may sit behind a non-translating bridge); "
                                + "VFIO cannot use it")]
        }
        return .invalid(.step(.findIOMMUGroup), "\(a) is in no IOMMU group" + why, object: a.description, remedies: remedies)
    }

    /// The IOMMUs registered with the kernel (`/sys/class/iommu`).
    public func iommus() -> [IOMMUInstance] {
        list("/sys/class/iommu").map { name in
            let dir = "/sys/class/iommu/" + name
            if exists(dir + "/intel-iommu") || name.hasPrefix("dmar") {
                var ir: Bool?
                if let e = readTrimmed(dir + "/intel-iommu/ecap"), let v = UInt64(e, radix: 16) { ir = v & (1 << 3) != 0 }
                return IOMMUInstance(name: name, kind: .intelVTd, supportsInterruptRemapping: ir)
            }
            if exists(dir + "/amd-iommu") || name.hasPrefix("ivhd") {
                return IOMMUInstance(name: name, kind: .amdVi, supportsInterruptRemapping: nil)
            }
            if name.contains("iommufd_selftest") {
                return IOMMUInstance(name: name, kind: .selftest, supportsInterruptRemapping: false)
            }
            // virtio-iommu registers under its PCI function's name (0000:00:02.0) below a virtioN device.
            let target = readLink(dir) ?? ""
            if name.hasPrefix("virtio") || target.contains("/virtio") || linkName(dir + "/device/driver") == "virtio_iommu" {
                return IOMMUInstance(name: name, kind: .virtio, supportsInterruptRemapping: false)
            }
            return IOMMUInstance(name: name, kind: .other, supportsInterruptRemapping: nil)
        }
    }

    /// Whether interrupt remapping is on: see ``InterruptRemapping`` for the signal.
    public func interruptRemapping() -> InterruptRemapping {
        let interrupts = read("/proc/interrupts") ?? ""
        var irChips = Set<String>()
        var plainIOAPIC = false
        var plainMSI = false
        for line in interrupts.split(separator: "\n") {
            for word in line.split(separator: " ") {
                if word.hasPrefix("IR-") { irChips.insert(String(word.split(separator: "-").prefix(3).joined(separator: "-"))) }
                if word == "IO-APIC" { plainIOAPIC = true }
                if word.hasPrefix("PCI-MSI") { plainMSI = true }
            }
        }
        if !irChips.isEmpty {
            return InterruptRemapping(state: .enabled, evidence: "/proc/interrupts shows remapped irqchips (\(irChips.sorted().joined(separator: ", ")))")
        }
        let ioms = iommus()
        if !ioms.isEmpty, ioms.allSatisfy({ $0.kind == .virtio || $0.kind == .selftest }) {
            return InterruptRemapping(state: .disabled, evidence: "virtio-iommu never remaps interrupts and no other IOMMU is present")
        }
        if plainIOAPIC || plainMSI {
            return InterruptRemapping(state: .disabled, evidence: "/proc/interrupts shows only non-remapped irqchips (IO-APIC/PCI-MSI, no IR- chips)")
        }
        return InterruptRemapping(state: .unknown, evidence: "/proc/interrupts shows no IO-APIC or MSI lines to judge by")
    }
}

// Keys with no value are written as null, never left out: the JSON keys are stable.
extension IOMMUGroup {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(type, forKey: .type)
        try c.encode(members, forKey: .members)
        try c.encode(otherMembers, forKey: .otherMembers)
    }
}

extension IOMMUInstance {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(kind, forKey: .kind)
        try c.encode(supportsInterruptRemapping, forKey: .supportsInterruptRemapping)
    }
}
