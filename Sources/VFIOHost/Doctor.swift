import SystemPackage
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One thing the doctor checked: what it found (``check``, facts only) and
/// what would fix it (``remedies``). The words are a front end's: the
/// command-line tool gives each finding a title, a detail and a fix.
///
/// `id` is a fixed name such as `iommu.present`, `interrupt-remapping`,
/// `dev.iommu`, `memlock`, `device.BDF.group`; `status` is `ok`, `info`,
/// `warn` or `fail`.
public struct DoctorFinding: Sendable, Equatable, Encodable {
    /// How the finding stands, from fine to blocking (ordered: `ok` < `info` < `warn` < `fail`).
    public enum Status: String, Sendable, Codable, Comparable {
        /// As VFIO needs it.
        case ok
        /// A fact worth knowing, nothing to fix.
        case info
        /// Works, but something may fail later (limits, unsafe settings).
        case warn
        /// VFIO cannot work until it is fixed.
        case fail
        var rank: Int { switch self { case .ok: 0; case .info: 1; case .warn: 2; case .fail: 3 } }
        public static func < (a: Status, b: Status) -> Bool { a.rank < b.rank }
    }
    /// The finding's fixed name (`iommu.present`, `memlock`, `device.BDF.group`).
    public var id: String
    /// How it stands.
    public var status: Status
    /// What was checked and found, as facts.
    public var check: DoctorCheck
    /// What would fix it, in order (empty when nothing needs fixing).
    public var remedies: [Remedy]

    /// A finding.
    public init(_ id: String, _ status: Status, _ check: DoctorCheck, remedies: [Remedy] = []) {
        self.id = id
        self.status = status
        self.check = check
        self.remedies = remedies
    }

    enum CodingKeys: String, CodingKey { case id, status, fix, remedies }
    /// `id`, `status`, `fix` (the remedies, worded by the encoder's ``RemedyWording``;
    /// null when there are none) and `remedies`.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(status, forKey: .status)
        try c.encode(encoder.remedyWording.words(remedies), forKey: .fix)
        try c.encode(remedies, forKey: .remedies)
    }
}

/// What one doctor check looked at and found: facts, no wording.
public enum DoctorCheck: Sendable, Equatable {
    /// The running kernel's release.
    case kernel(release: String)
    /// No IOMMU registered and no IOMMU groups.
    case iommuMissing
    /// IOMMUs are registered, but no device is in a group (or only the selftest IOMMU is there).
    case iommuCoversNothing(iommus: [IOMMUInstance], onlySelftest: Bool)
    /// The IOMMUs and how many groups they made.
    case iommuPresent(iommus: [IOMMUInstance], groups: Int)
    /// The kernel runs host devices in passthrough (`iommu=pt`).
    case iommuPassthrough
    /// Whether MSIs are remapped; `unsafeAllowed` when an `allow_unsafe_interrupts` parameter is set.
    case interruptRemapping(InterruptRemapping, unsafeAllowed: Bool)
    /// A module's `allow_unsafe_interrupts` parameter (`iommufd`, `vfio_iommu_type1`).
    case unsafeInterruptsParameter(module: String, isSet: Bool)
    /// Whether each IOMMU will enforce cache coherency for VFIO domains, from its capabilities.
    case cacheCoherencyPredicted([CoherencyPrediction])
    /// /dev/iommu is there; its permissions, and the iommufd requests the kernel has when probed.
    case iommufdNode(NodeAccess?, probe: IOMMUFDProbe?)
    /// /dev/iommu is not there (no `CONFIG_IOMMUFD`, or the module is not loaded).
    case iommufdNodeMissing
    /// /dev/vfio/vfio (the legacy container), present (with its permissions) or not.
    case containerNode(NodeAccess?)
    /// /dev/vfio/vfio is not there (no `CONFIG_VFIO_CONTAINER`, or VFIO is not loaded).
    case containerNodeMissing
    /// VFIO device cdevs (/sys/class/vfio-dev), and whether VFIO is loaded at all.
    case cdevSupport(supported: Bool, vfioLoaded: Bool)
    /// The vfio-pci driver is registered.
    case vfioPCIDriver(loaded: Bool)
    /// RLIMIT_MEMLOCK, CAP_IPC_LOCK and the bytes asked for.
    case memlock(MemlockFacts)
    /// RLIMIT_MEMLOCK could not be read (`getrlimit`).
    case memlockUnreadable(VFIOError)
    /// vfio_iommu_type1.dma_entry_limit.
    case dmaEntryLimit(String)
    /// Huge page pools (`hugepages-2048kB`: reserved, free) and THP's setting.
    case hugePages(pools: [HugePagePool], transparent: String?)
    /// A group with a member on vfio-pci: not checkable, not viable, or viable.
    case groupUnchecked(Int, VFIOError)
    /// A group that is not viable, member by member.
    case groupNotViable(GroupViability)
    /// A viable group and its members on vfio-pci.
    case groupViable(Int, onVFIO: [PCIAddress])
    /// The device asked about.
    case deviceMissing(PCIAddress, VFIOError)
    /// The device asked about, as sysfs describes it.
    case device(PCIDevice)
    /// The device is in no IOMMU group (no IOMMU translates it).
    case deviceWithoutGroup(PCIAddress, VFIOError)
    /// The device's group could not be read.
    case deviceGroupUnchecked(PCIAddress, group: Int, VFIOError)
    /// The device's group, member by member (viable when nothing but the device itself blocks).
    case deviceGroup(PCIAddress, GroupViability, deviceOnVFIO: Bool)
    /// The device's driver, and its users when it is not on vfio-pci.
    case deviceDriver(PCIDevice, uses: [DeviceUse])
    /// Processes holding a VFIO node of the device's group.
    case deviceHolders(group: Int, [VFIOHolder])
    /// A VFIO node of the device and its permissions.
    case deviceNode(NodeAccess)
    /// The kernel's own answer on cache coherency for the device (VFIOKit's doctor adds it).
    case deviceCacheCoherency(enforced: Bool?, query: String)
    /// The kernel could not be asked about cache coherency for the device.
    case deviceCacheCoherencyUnknown(VFIOError)

    /// A node's permissions and whether this process may open it read-write.
    public struct NodeAccess: Sendable, Equatable {
        /// The node (`/dev/iommu`, `/dev/vfio/vfio`, `/dev/vfio/N`).
        public var path: String
        /// Its owner, group and mode.
        public var status: FileStatus
        /// Whether this process may open it read-write (`access(2)`).
        public var canReadWrite: Bool
    }

    /// What an IOMMU will do for no-snoop DMA in a VFIO domain.
    public struct CoherencyPrediction: Sendable, Equatable {
        /// The IOMMU.
        public var iommu: IOMMUInstance
        /// nil: unknown.
        public var enforced: Bool?
    }

    /// The probe of /dev/iommu: every request there, some missing, or no open.
    public enum IOMMUFDProbe: Sendable, Equatable {
        /// Every iommufd request of the table is there (`count` of them).
        case all(count: Int)
        /// These requests are missing (an older kernel).
        case missing([Request])
        /// /dev/iommu could not be opened for the probe.
        case cannotOpen(VFIOError)
    }

    /// The facts about pinned-memory limits.
    public struct MemlockFacts: Sendable, Equatable {
        /// The soft limit in bytes; nil: unlimited.
        public var limit: UInt64?
        /// CAP_IPC_LOCK: pinned pages are not charged.
        public var ipcLock: Bool
        /// The bytes asked about (`--memlock`).
        public var wanted: UInt64?
    }

    /// One huge page pool (`/sys/kernel/mm/hugepages/NAME`).
    public struct HugePagePool: Sendable, Equatable {
        /// `hugepages-2048kB`.
        public var name: String
        /// Pages reserved (`nr_hugepages`).
        public var reserved: String
        /// Pages free (`free_hugepages`).
        public var free: String
    }
}

/// What the doctor should look at.
public struct DoctorOptions: Sendable {
    /// A device to check in detail (group viability, driver, node permissions, users).
    public var device: PCIAddress?
    /// Bytes the user means to pin for DMA, checked against RLIMIT_MEMLOCK.
    public var memlockBytes: UInt64?
    /// Open /dev/iommu and probe which iommufd ioctls the kernel has.
    public var probeKernel: Bool

    /// Options for ``PCIHost/hostChecks(_:)``.
    public init(device: PCIAddress? = nil, memlockBytes: UInt64? = nil, probeKernel: Bool = true) {
        self.device = device
        self.memlockBytes = memlockBytes
        self.probeKernel = probeKernel
    }
}

extension PCIHost {
    /// Which iommufd requests the running kernel has (every one of the
    /// request table, ``Request/iommufd``), by the one probe of the library
    /// (`OwnedFD.probe(_:)`: zero-size arguments, EINVAL present, ENOTTY
    /// missing). Throws when /dev/iommu cannot be opened.
    public func probeIOMMUFD() throws(VFIOError) -> [(request: Request, present: Bool)] {
        let fd = OwnedFD(try Sys.open(kernel, path("/dev/iommu"), O_RDWR, object: "/dev/iommu"), label: "/dev/iommu",
                         kernel: kernel)
        defer { try? fd.close() }
        return try fd.probe(Request.iommufd)
    }

    /// The host's checks of everything between this machine and a working
    /// VFIO setup (VFIOKit's `doctor(_:)` runs them and adds what needs the
    /// kernel objects). Never changes anything: module parameters such as
    /// `allow_unsafe_interrupts` are reported, not set.
    public func hostChecks(_ options: DoctorOptions = DoctorOptions()) -> [DoctorFinding] {
        var f: [DoctorFinding] = []
        let release = read("/proc/sys/kernel/osrelease")?.trimmingWhitespace() ?? KernelVersion.runningRelease
        f.append(.init("kernel", .info, .kernel(release: release)))

        // IOMMU present and enabled.
        let ioms = iommus()
        let groupsList = list("/sys/kernel/iommu_groups")
        let cmdline = readTrimmed("/proc/cmdline") ?? ""
        if ioms.isEmpty && groupsList.isEmpty {
            f.append(.init("iommu.present", .fail, .iommuMissing, remedies: [.enableIOMMU]))
        } else {
            let realIOMMUs = ioms.filter { $0.kind != .selftest }
            if groupsList.isEmpty || realIOMMUs.isEmpty {
                f.append(.init("iommu.present", .fail, .iommuCoversNothing(iommus: ioms, onlySelftest: realIOMMUs.isEmpty),
                               remedies: [.readKernelLog(matching: ["iommu", "dmar", "viot"])]))
            } else {
                f.append(.init("iommu.present", .ok, .iommuPresent(iommus: ioms, groups: groupsList.count)))
            }
            if cmdline.split(separator: " ").contains(where: { $0 == "iommu=pt" || $0 == "iommu.passthrough=1" }) {
                f.append(.init("iommu.passthrough", .info, .iommuPassthrough))
            }
        }

        // Interrupt remapping.
        let ir = interruptRemapping()
        let unsafeIOMMUFD = readTrimmed("/sys/module/iommufd/parameters/allow_unsafe_interrupts")
        let unsafeType1 = readTrimmed("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
        let allowed = unsafeIOMMUFD == "Y" || unsafeType1 == "Y"
        switch ir.state {
        case .enabled:
            f.append(.init("interrupt-remapping", .ok, .interruptRemapping(ir, unsafeAllowed: allowed)))
        case .disabled:
            let virtio = ioms.contains { $0.kind == .virtio }
            var remedies: [Remedy] = [.enableInterruptRemapping(virtioIOMMU: virtio)]
            if !allowed { remedies.append(.allowUnsafeInterrupts(parameter: "iommufd.allow_unsafe_interrupts")) }
            f.append(.init("interrupt-remapping", allowed ? .warn : .fail, .interruptRemapping(ir, unsafeAllowed: allowed),
                           remedies: remedies))
        case .unknown:
            f.append(.init("interrupt-remapping", .warn, .interruptRemapping(ir, unsafeAllowed: allowed),
                           remedies: [.advice("VFIO_DEVICE_BIND_IOMMUFD failing with EPERM is the sure sign that it is "
                                              + "missing")]))
        }
        for (name, v) in [("iommufd", unsafeIOMMUFD), ("vfio_iommu_type1", unsafeType1)] {
            guard let v else { continue }
            f.append(.init("param.\(name).allow_unsafe_interrupts", v == "Y" ? .warn : .info,
                           .unsafeInterruptsParameter(module: name, isSet: v == "Y")))
        }

        // Cache coherency, as the IOMMUs' capabilities predict it.
        if let cc = cacheCoherencyFinding(ioms) { f.append(cc) }

        // Nodes and kernel support.
        if exists("/dev/iommu") {
            var status: DoctorFinding.Status = .ok
            var probe: DoctorCheck.IOMMUFDProbe?
            var remedies: [Remedy] = []
            if options.probeKernel {
                do throws(VFIOError) {
                    let probes = try probeIOMMUFD()
                    let missing = probes.filter { !$0.present }.map(\.request)
                    if missing.isEmpty {
                        probe = .all(count: probes.count)
                    } else {
                        status = .warn
                        probe = .missing(missing)
                        remedies = [.newerKernel(lacking: missing, running: nil)]
                    }
                } catch {
                    status = error.errno == .permissionDenied || error.errno == .notPermitted ? .warn : .fail
                    probe = .cannotOpen(error)
                    remedies = error.remedies
                }
            }
            f.append(.init("dev.iommu", status, .iommufdNode(nodeAccess("/dev/iommu"), probe: probe), remedies: remedies))
        } else {
            f.append(.init("dev.iommu", .fail, .iommufdNodeMissing,
                           remedies: [.kernelConfig(["CONFIG_IOMMUFD"], since: KernelVersion(6, 2)), .loadModule("iommufd")]))
        }
        if exists("/dev/vfio/vfio") {
            f.append(.init("dev.vfio", .ok, .containerNode(nodeAccess("/dev/vfio/vfio"))))
        } else {
            f.append(.init("dev.vfio", .info, .containerNodeMissing,
                           remedies: [.kernelConfig(["CONFIG_VFIO_CONTAINER", "CONFIG_IOMMUFD_VFIO_CONTAINER"], since: nil)]))
        }
        if exists("/sys/class/vfio-dev") {
            f.append(.init("vfio.cdev", .ok, .cdevSupport(supported: true, vfioLoaded: true)))
        } else {
            let loaded = exists("/sys/module/vfio")
            f.append(.init("vfio.cdev", loaded ? .fail : .warn, .cdevSupport(supported: false, vfioLoaded: loaded),
                           remedies: loaded ? [.kernelConfig(["CONFIG_VFIO_DEVICE_CDEV"], since: KernelVersion(6, 6))]
                                            : [.loadModule("vfio-pci")]))
        }
        if driverRegistered("vfio-pci") {
            f.append(.init("driver.vfio-pci", .ok, .vfioPCIDriver(loaded: true)))
        } else {
            f.append(.init("driver.vfio-pci", .fail, .vfioPCIDriver(loaded: false),
                           remedies: [.loadModule("vfio-pci"), .kernelConfig(["CONFIG_VFIO_PCI"], since: nil)]))
        }

        // Memory locking.
        f.append(memlockFinding(options.memlockBytes))
        if let limit = readTrimmed("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit") {
            f.append(.init("param.vfio_iommu_type1.dma_entry_limit", .info, .dmaEntryLimit(limit)))
        }
        f.append(hugepageFinding())

        // Devices and groups.
        if let a = options.device {
            f.append(contentsOf: deviceFindings(a))
        } else {
            for g in groups() {
                let members = g.members.compactMap { try? device($0) }
                guard members.contains(where: { $0.isBoundToVFIO }) else { continue }
                let v: GroupViability
                do { v = try viability(ofGroup: g.id) } catch {
                    f.append(.init("group.\(g.id)", .fail, .groupUnchecked(g.id, error),
                                   remedies: [.inspect(path: "/sys/kernel/iommu_groups/\(g.id)/devices/")]))
                    continue
                }
                if !v.viable {
                    f.append(.init("group.\(g.id)", .fail, .groupNotViable(v), remedies: v.remedies))
                } else {
                    f.append(.init("group.\(g.id)", .ok, .groupViable(g.id, onVFIO: members.filter(\.isBoundToVFIO).map(\.address))))
                }
            }
        }
        return f
    }

    /// A node's permissions, or nil when it cannot be stat'ed.
    func nodeAccess(_ p: String) -> DoctorCheck.NodeAccess? {
        guard let st = fileStatus(p) else { return nil }
        return DoctorCheck.NodeAccess(path: p, status: st, canReadWrite: canReadWrite(p))
    }

    /// Whether VFIO domains on `iommu` will enforce cache coherency (block
    /// no-snoop DMA), from what the kernel's driver does: VT-d when ECAP.SC
    /// (snoop control, bit 7) is set (`intel_iommu_capable`,
    /// `domain_support_force_snooping`), AMD-Vi always (`amd_iommu_enforce_cache_coherency`),
    /// virtio-iommu never (no `enforce_cache_coherency` op); nil when unknown.
    public func expectedCacheCoherency(of iommu: IOMMUInstance) -> Bool? {
        switch iommu.kind {
        case .intelVTd:
            guard let e = readTrimmed("/sys/class/iommu/\(iommu.name)/intel-iommu/ecap"), let v = UInt64(e, radix: 16) else { return nil }
            return v & (1 << 7) != 0
        case .amdVi: return true
        case .virtio: return false
        case .selftest, .other: return nil
        }
    }

    func cacheCoherencyFinding(_ ioms: [IOMMUInstance]) -> DoctorFinding? {
        let real = ioms.filter { $0.kind != .selftest }
        guard !real.isEmpty else { return nil }
        return .init("cache-coherency", .info,
                     .cacheCoherencyPredicted(real.map { .init(iommu: $0, enforced: expectedCacheCoherency(of: $0)) }))
    }

    func memlockFinding(_ want: UInt64?) -> DoctorFinding {
        let limit: MemlockLimit
        do throws(VFIOError) {
            limit = try MemlockLimit.current()
        } catch {
            return .init("memlock", .warn, .memlockUnreadable(error), remedies: [.showMemlock])
        }
        let cur = limit.soft ?? UInt64.max
        let capEff = readTrimmed("/proc/self/status")?.split(separator: "\n")
            .first { $0.hasPrefix("CapEff:") }
            .flatMap { UInt64($0.split(separator: "\t").last.map(String.init)?.trimmingWhitespace() ?? "", radix: 16) } ?? 0
        let ipcLock = capEff & (1 << 14) != 0
        let facts = DoctorCheck.MemlockFacts(limit: limit.soft, ipcLock: ipcLock, wanted: want)
        if let want {
            if ipcLock || limit.soft == nil || cur >= want {
                return .init("memlock", .ok, .memlock(facts))
            }
            return .init("memlock", .fail, .memlock(facts), remedies: [.raiseMemlock(atLeast: want)])
        }
        if !ipcLock && limit.soft != nil && cur < 64 << 20 {
            return .init("memlock", .warn, .memlock(facts), remedies: [.raiseMemlock(atLeast: nil)])
        }
        return .init("memlock", .info, .memlock(facts))
    }

    func hugepageFinding() -> DoctorFinding {
        var pools: [DoctorCheck.HugePagePool] = []
        for d in list("/sys/kernel/mm/hugepages") {
            let n = readTrimmed("/sys/kernel/mm/hugepages/\(d)/nr_hugepages") ?? "?"
            let free = readTrimmed("/sys/kernel/mm/hugepages/\(d)/free_hugepages") ?? "?"
            pools.append(.init(name: d, reserved: n, free: free))
        }
        let thp = readTrimmed("/sys/kernel/mm/transparent_hugepage/enabled")
        let twoMiB = list("/sys/kernel/mm/hugepages").first { $0 == "hugepages-2048kB" } ?? list("/sys/kernel/mm/hugepages").first
        return .init("hugepages", .info, .hugePages(pools: pools, transparent: thp),
                     remedies: twoMiB.map { [.reserveHugePages(count: 64, pool: $0)] } ?? [])
    }

    func deviceFindings(_ a: PCIAddress) -> [DoctorFinding] {
        var f: [DoctorFinding] = []
        let id = "device.\(a)"
        let dev: PCIDevice
        do { dev = try device(a) } catch {
            return [.init(id, .fail, .deviceMissing(a, error), remedies: error.remedies)]
        }
        f.append(.init(id, .info, .device(dev)))
        guard let gid = dev.iommuGroup else {
            let e = noGroupError(a)
            f.append(.init("\(id).group", .fail, .deviceWithoutGroup(a, e), remedies: e.remedies))
            return f
        }
        let viable: GroupViability?
        do { viable = try viability(ofGroup: gid) } catch {
            viable = nil
            f.append(.init("\(id).group", .fail, .deviceGroupUnchecked(a, group: gid, error),
                           remedies: [.inspect(path: "/sys/kernel/iommu_groups/\(gid)/devices/")]))
        }
        if let v = viable {
            let others = v.members.filter { $0.address != a }
            let blockers = others.filter { $0.status == .blocking || $0.status == .unreadable }
            f.append(.init("\(id).group", blockers.isEmpty ? .ok : .fail, .deviceGroup(a, v, deviceOnVFIO: dev.isBoundToVFIO),
                           remedies: blockers.isEmpty ? [] : v.remedies))
        }
        if dev.isBoundToVFIO {
            f.append(.init("\(id).driver", .ok, .deviceDriver(dev, uses: [])))
        } else {
            let uses = uses(of: a)
            f.append(.init("\(id).driver", uses.isEmpty ? .warn : .fail, .deviceDriver(dev, uses: uses),
                           remedies: uses.compactMap(\.remedy) + [.bindToVFIO(a)]))
        }
        let holders = groupHolders(ofGroup: gid)
        if !holders.isEmpty {
            var processes: [Remedy.RunningProcess] = []
            for h in holders where !processes.contains(where: { $0.pid == h.pid }) {
                processes.append(.init(pid: h.pid, command: h.command))
            }
            f.append(.init("\(id).holders", .warn, .deviceHolders(group: gid, holders),
                           remedies: [.stopProcesses(processes)]))
        }
        var nodes: [String] = ["/dev/vfio/\(gid)"]
        if let c = dev.vfioCdevPath { nodes.append(c) }
        let uid = Sys.getuid(kernel)
        for n in nodes where exists(n) {
            guard let node = nodeAccess(n) else { continue }
            f.append(.init("\(id).node.\(n)", node.canReadWrite ? .ok : .warn, .deviceNode(node),
                           remedies: node.canReadWrite ? [] : [.grantAccess(path: n, uid: uid)]))
        }
        return f
    }
}
