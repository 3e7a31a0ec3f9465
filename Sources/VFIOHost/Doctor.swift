import SystemPackage
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One thing `vfioctl doctor` checked: what it found and what to do.
///
/// JSON keys (stable): `id` (a fixed name such as `iommu.present`,
/// `interrupt-remapping`, `dev.iommu`, `memlock`), `status` (`ok`, `warn`,
/// `fail`, `info`), `title`, `detail`, `fix` (null when there is nothing to do).
public struct DoctorFinding: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Codable, Comparable {
        case ok, info, warn, fail
        var rank: Int { switch self { case .ok: 0; case .info: 1; case .warn: 2; case .fail: 3 } }
        public static func < (a: Status, b: Status) -> Bool { a.rank < b.rank }
    }
    public var id: String
    public var status: Status
    public var title: String
    public var detail: String
    public var fix: String?

    public init(_ id: String, _ status: Status, _ title: String, _ detail: String, fix: String? = nil) {
        self.id = id
        self.status = status
        self.title = title
        self.detail = detail
        self.fix = fix
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
    /// missing). Returns (name, present) pairs; throws when /dev/iommu cannot be opened.
    public func probeIOMMUFD() throws(VFIOError) -> [(name: String, present: Bool)] {
        let fd = OwnedFD(try Sys.open(kernel, path("/dev/iommu"), O_RDWR, object: "/dev/iommu"), label: "/dev/iommu",
                         kernel: kernel)
        defer { try? fd.close() }
        return try fd.probe(Request.iommufd).map { ($0.request.name, $0.present) }
    }

    /// The host's checks of everything between this machine and a working
    /// VFIO setup (VFIOKit's `doctor(_:)` runs them and adds what needs the
    /// kernel objects). Never changes anything: module parameters such as
    /// `allow_unsafe_interrupts` are reported, not set.
    public func hostChecks(_ options: DoctorOptions = DoctorOptions()) -> [DoctorFinding] {
        var f: [DoctorFinding] = []
        let release = read("/proc/sys/kernel/osrelease")?.trimmingWhitespace() ?? KernelFeatures.runningRelease
        f.append(.init("kernel", .info, "Kernel", "Linux \(release)"))

        // IOMMU present and enabled.
        let ioms = iommus()
        let groupsList = list("/sys/kernel/iommu_groups")
        let cmdline = readTrimmed("/proc/cmdline") ?? ""
        if ioms.isEmpty && groupsList.isEmpty {
            f.append(.init("iommu.present", .fail, "IOMMU", "no IOMMU is registered (/sys/class/iommu is empty) and there are no IOMMU groups",
                           fix: "enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD); in a VM add an IOMMU device (QEMU: -device intel-iommu,intremap=on)"))
        } else {
            let kinds = ioms.map { "\($0.name) (\($0.kind.rawValue))" }.joined(separator: ", ")
            let realIOMMUs = ioms.filter { $0.kind != .selftest }
            if groupsList.isEmpty || realIOMMUs.isEmpty {
                f.append(.init("iommu.present", .fail, "IOMMU", "\(kinds.isEmpty ? "no IOMMU" : kinds) registered, but "
                               + (realIOMMUs.isEmpty ? "only the iommufd selftest IOMMU, which translates no real device" : "no device is in an IOMMU group"),
                               fix: "check the kernel log (dmesg | grep -i -e iommu -e dmar -e viot) for why the IOMMU does not cover the PCI devices"))
            } else {
                f.append(.init("iommu.present", .ok, "IOMMU", "\(ioms.count) IOMMU\(ioms.count == 1 ? "" : "s"): \(kinds); \(groupsList.count) IOMMU groups"))
            }
            if cmdline.split(separator: " ").contains(where: { $0 == "iommu=pt" || $0 == "iommu.passthrough=1" }) {
                f.append(.init("iommu.passthrough", .info, "IOMMU default domain", "the kernel runs host devices in passthrough (iommu=pt); VFIO still isolates the devices it owns"))
            }
        }

        // Interrupt remapping.
        let ir = interruptRemapping()
        let unsafeIOMMUFD = readTrimmed("/sys/module/iommufd/parameters/allow_unsafe_interrupts")
        let unsafeType1 = readTrimmed("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
        switch ir.state {
        case .enabled:
            f.append(.init("interrupt-remapping", .ok, "Interrupt remapping", "enabled: \(ir.evidence)"))
        case .disabled:
            let allowed = unsafeIOMMUFD == "Y" || unsafeType1 == "Y"
            let virtio = ioms.contains { $0.kind == .virtio }
            f.append(.init("interrupt-remapping", allowed ? .warn : .fail, "Interrupt remapping",
                           "absent: \(ir.evidence). Without it a device could forge MSIs, so VFIO refuses to bind devices (VFIO_DEVICE_BIND_IOMMUFD / VFIO_SET_IOMMU fail with EPERM)"
                           + (allowed ? "; allow_unsafe_interrupts is set, so VFIO works without isolation" : ""),
                           fix: (virtio
                               ? "virtio-iommu cannot remap interrupts; use an IOMMU that can (QEMU: -device intel-iommu,intremap=on)"
                               : "enable interrupt remapping (x2APIC and intremap=on; in firmware: VT-d/AMD-Vi with interrupt remapping)")
                               + (allowed ? "; the risk is currently accepted through allow_unsafe_interrupts"
                                          : ", or accept the risk with iommufd.allow_unsafe_interrupts=1 (a security decision VFIOKit never takes for you)")))
        case .unknown:
            f.append(.init("interrupt-remapping", .warn, "Interrupt remapping", "unknown: \(ir.evidence)",
                           fix: "VFIO_DEVICE_BIND_IOMMUFD failing with EPERM is the sure sign that it is missing"))
        }
        for (name, v) in [("iommufd", unsafeIOMMUFD), ("vfio_iommu_type1", unsafeType1)] {
            guard let v else { continue }
            f.append(.init("param.\(name).allow_unsafe_interrupts", v == "Y" ? .warn : .info,
                           "\(name).allow_unsafe_interrupts", v == "Y"
                               ? "set (Y): devices without interrupt isolation are allowed; a device could inject interrupts"
                               : "not set (N): the safe default; VFIOKit reports it and never sets it"))
        }

        // Cache coherency, as the IOMMUs' capabilities predict it.
        if let cc = cacheCoherencyFinding(ioms) { f.append(cc) }

        // Nodes and kernel support.
        if exists("/dev/iommu") {
            var detail = "present" + permissionText("/dev/iommu")
            var status: DoctorFinding.Status = .ok
            var fix: String?
            if options.probeKernel {
                do throws(VFIOError) {
                    let probes = try probeIOMMUFD()
                    let missing = probes.filter { !$0.present }.map(\.name)
                    if missing.isEmpty {
                        detail += "; the kernel has all \(probes.count) iommufd ioctls VFIOKit uses"
                    } else {
                        status = .warn
                        detail += "; this kernel lacks " + missing.map { n in
                            Request.named(n)?.introduced.map { "\(n) (Linux \($0))" } ?? n
                        }.joined(separator: ", ")
                        fix = "features that need them are unavailable; a newer kernel has them"
                    }
                } catch {
                    status = error.errno?.rawValue == EACCES || error.errno?.rawValue == EPERM ? .warn : .fail
                    detail += "; cannot open it: \(error.errno?.name ?? "error")"
                    fix = error.hint
                }
            }
            f.append(.init("dev.iommu", status, "/dev/iommu (iommufd)", detail, fix: fix))
        } else {
            f.append(.init("dev.iommu", .fail, "/dev/iommu (iommufd)", "missing",
                           fix: "the kernel needs CONFIG_IOMMUFD (Linux 6.2 or later; `modprobe iommufd` if it is a module)"))
        }
        if exists("/dev/vfio/vfio") {
            f.append(.init("dev.vfio", .ok, "/dev/vfio/vfio (legacy container)", "present" + permissionText("/dev/vfio/vfio")))
        } else {
            f.append(.init("dev.vfio", .info, "/dev/vfio/vfio (legacy container)", "missing: only the iommufd cdev path is available",
                           fix: "for the legacy group/container path the kernel needs CONFIG_VFIO_CONTAINER or CONFIG_IOMMUFD_VFIO_CONTAINER"))
        }
        if exists("/sys/class/vfio-dev") {
            f.append(.init("vfio.cdev", .ok, "VFIO device cdevs", "supported (/sys/class/vfio-dev exists)"))
        } else {
            f.append(.init("vfio.cdev", exists("/sys/module/vfio") ? .fail : .warn, "VFIO device cdevs",
                           exists("/sys/module/vfio") ? "VFIO is loaded but has no cdev support" : "VFIO is not loaded",
                           fix: exists("/sys/module/vfio") ? "the kernel needs CONFIG_VFIO_DEVICE_CDEV (Linux 6.6 or later)" : "`modprobe vfio-pci`"))
        }
        if driverRegistered("vfio-pci") {
            f.append(.init("driver.vfio-pci", .ok, "vfio-pci driver", "loaded"))
        } else {
            f.append(.init("driver.vfio-pci", .fail, "vfio-pci driver", "not loaded (/sys/bus/pci/drivers/vfio-pci missing)",
                           fix: "`modprobe vfio-pci` (CONFIG_VFIO_PCI)"))
        }

        // Memory locking.
        f.append(memlockFinding(options.memlockBytes))
        if let limit = readTrimmed("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit") {
            f.append(.init("param.vfio_iommu_type1.dma_entry_limit", .info, "type1 DMA mapping limit",
                           "vfio_iommu_type1.dma_entry_limit = \(limit) mappings per container (legacy path only; iommufd has no such limit)"))
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
                    f.append(.init("group.\(g.id)", .fail, "IOMMU group \(g.id)", "could not be checked: " + error.description,
                                   fix: "`ls -l /sys/kernel/iommu_groups/\(g.id)/devices/`"))
                    continue
                }
                if !v.viable {
                    f.append(.init("group.\(g.id)", .fail, "IOMMU group \(g.id)", v.summary, fix: v.advice))
                } else {
                    f.append(.init("group.\(g.id)", .ok, "IOMMU group \(g.id)", "viable; on vfio-pci: "
                                   + members.filter(\.isBoundToVFIO).map(\.address.description).joined(separator: ", ")))
                }
            }
        }
        return f
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
        let parts = real.map { i -> String in
            let why: String = switch i.kind {
            case .intelVTd: "VT-d ECAP.SC (snoop control) is \(expectedCacheCoherency(of: i).map { $0 ? "1" : "0" } ?? "unreadable")"
            case .amdVi: "AMD-Vi page tables always set the force-coherent bit"
            case .virtio: "virtio-iommu cannot block no-snoop DMA"
            case .selftest, .other: "unknown IOMMU"
            }
            let word = expectedCacheCoherency(of: i).map { $0 ? "enforced" : "NOT enforced" } ?? "unknown"
            return "\(i.name): \(word) (\(why))"
        }
        return .init("cache-coherency", .info, "Cache coherency",
                     "expected for VFIO domains: " + parts.joined(separator: "; ")
                        + ". Enforced means the IOMMU blocks no-snoop DMA and a VM needs no wbinvd emulation; not enforced "
                        + "means a device can bypass the CPU caches and a VM must emulate wbinvd. The kernel decides; VFIOKit "
                        + "reports it and never changes it. `vfioctl doctor` with a device address and `vfioctl attach` ask the kernel "
                        + "(VFIO_DMA_CC_IOMMU) for a device")
    }

    func permissionText(_ p: String) -> String {
        guard let st = fileStatus(p) else { return "" }
        let rw = canReadWrite(p)
        return " (\(st.modeString) uid \(st.uid) gid \(st.gid); this user \(rw ? "can" : "cannot") open it read-write)"
    }

    func memlockFinding(_ want: UInt64?) -> DoctorFinding {
        let limit: MemlockLimit
        do throws(VFIOError) {
            limit = try MemlockLimit.current()
        } catch {
            return .init("memlock", .warn, "Locked-memory limit", "RLIMIT_MEMLOCK could not be read: " + error.description,
                         fix: "`ulimit -l` shows it")
        }
        let cur = limit.soft ?? UInt64.max
        let capEff = readTrimmed("/proc/self/status")?.split(separator: "\n")
            .first { $0.hasPrefix("CapEff:") }
            .flatMap { UInt64($0.split(separator: "\t").last.map(String.init)?.trimmingWhitespace() ?? "", radix: 16) } ?? 0
        let ipcLock = capEff & (1 << 14) != 0
        let limitText = limit.soft == nil ? "unlimited" : formatBytes(cur)
        var detail = "RLIMIT_MEMLOCK is \(limitText)"
        if ipcLock { detail += "; this process has CAP_IPC_LOCK, so iommufd does not count its pinned pages" }
        if let want {
            detail += "; asked to pin \(formatBytes(want))"
            if ipcLock || limit.soft == nil || cur >= want {
                return .init("memlock", .ok, "Locked-memory limit", detail)
            }
            return .init("memlock", .fail, "Locked-memory limit", detail,
                         fix: "raise it to at least \(formatBytes(want)): `ulimit -l \(want / 1024)` (KiB), limits.conf `memlock`, or systemd LimitMEMLOCK=; or run with CAP_IPC_LOCK")
        }
        if !ipcLock && limit.soft != nil && cur < 64 << 20 {
            return .init("memlock", .warn, "Locked-memory limit", detail + "; DMA mappings count against it",
                         fix: "raise it for the user that maps memory (`ulimit -l`, limits.conf memlock, LimitMEMLOCK=); `--memlock SIZE` checks a size")
        }
        return .init("memlock", .info, "Locked-memory limit", detail)
    }

    func hugepageFinding() -> DoctorFinding {
        var parts: [String] = []
        for d in list("/sys/kernel/mm/hugepages") {
            let n = readTrimmed("/sys/kernel/mm/hugepages/\(d)/nr_hugepages") ?? "?"
            let free = readTrimmed("/sys/kernel/mm/hugepages/\(d)/free_hugepages") ?? "?"
            parts.append("\(d.replacingPrefix("hugepages-", with: "")): \(n) reserved, \(free) free")
        }
        if let thp = readTrimmed("/sys/kernel/mm/transparent_hugepage/enabled") { parts.append("THP \(thp)") }
        let twoMiB = list("/sys/kernel/mm/hugepages").first { $0 == "hugepages-2048kB" } ?? list("/sys/kernel/mm/hugepages").first
        return .init("hugepages", .info, "Huge pages", parts.isEmpty ? "no huge page support visible" : parts.joined(separator: "; "),
                     fix: twoMiB.map { "huge pages make fewer, larger IOMMU mappings; to reserve 64 of them: "
                        + "`echo 64 > /sys/kernel/mm/hugepages/\($0)/nr_hugepages`" })
    }

    func deviceFindings(_ a: PCIAddress) -> [DoctorFinding] {
        var f: [DoctorFinding] = []
        let id = "device.\(a)"
        let dev: PCIDevice
        do { dev = try device(a) } catch {
            return [.init(id, .fail, "Device \(a)", error.detail ?? error.description, fix: error.hint)]
        }
        f.append(.init(id, .info, "Device \(a)", "\(dev.ids) \(dev.className), driver \(dev.driver ?? "none")"
                       + (dev.driverOverride.map { ", driver_override \($0)" } ?? "")))
        guard let gid = dev.iommuGroup else {
            let e = noGroupError(a)
            f.append(.init("\(id).group", .fail, "IOMMU group", e.detail ?? "", fix: e.hint))
            return f
        }
        let viable: GroupViability?
        do { viable = try viability(ofGroup: gid) } catch {
            viable = nil
            f.append(.init("\(id).group", .fail, "IOMMU group \(gid)", "could not be checked: " + error.description,
                           fix: "`ls -l /sys/kernel/iommu_groups/\(gid)/devices/`"))
        }
        if let v = viable {
            let others = v.members.filter { $0.address != a }
            let blockers = others.filter { $0.status == .blocking || $0.status == .unreadable }
            let memberText = v.members.map { "\($0.address) \($0.reason)" }.joined(separator: "; ")
            if blockers.isEmpty {
                f.append(.init("\(id).group", .ok, "IOMMU group \(gid)",
                               (dev.isBoundToVFIO ? "viable: " : "viable once \(a) is on vfio-pci: ") + memberText))
            } else {
                f.append(.init("\(id).group", .fail, "IOMMU group \(gid)",
                               "not viable: " + blockers.map(\.blockingText).joined(separator: ", ")
                               + " (members: \(memberText))", fix: v.advice))
            }
        }
        if dev.isBoundToVFIO {
            f.append(.init("\(id).driver", .ok, "Driver", "bound to \(dev.driver ?? "")" + (dev.vfioCdev.map { ", cdev /dev/vfio/devices/\($0)" } ?? "")))
        } else {
            let uses = uses(of: a)
            f.append(.init("\(id).driver", uses.isEmpty ? .warn : .fail, "Driver",
                           "bound to \(dev.driver ?? "no driver"), not vfio-pci" + (uses.isEmpty ? "" : "; in use: " + uses.map(\.detail).joined(separator: "; ")),
                           fix: uses.isEmpty ? "`vfioctl bind \(a)`" : "stop using it, then `vfioctl bind \(a)`"))
        }
        let holders = groupHolders(ofGroup: gid)
        if !holders.isEmpty {
            var pids: [Int32] = []
            for h in holders where !pids.contains(h.pid) { pids.append(h.pid) }
            f.append(.init("\(id).holders", .warn, "Owner", "IOMMU group \(gid) is held: "
                           + holders.map(\.description).joined(separator: "; ")
                           + "; the devices of one IOMMU group cannot be split between owners",
                           fix: "stop pid \(pids.map(String.init).joined(separator: ", ")) or let it release the group "
                            + "(`kill \(pids.map(String.init).joined(separator: " "))`)"))
        }
        var nodes: [String] = ["/dev/vfio/\(gid)"]
        if let c = dev.vfioCdevPath { nodes.append(c) }
        let uid = Sys.getuid(kernel)
        for n in nodes where exists(n) {
            let rw = canReadWrite(n)
            f.append(.init("\(id).node.\(n)", rw ? .ok : .warn, n, "present" + permissionText(n),
                           fix: rw ? nil : "as root: `chown \(uid) \(n)` (this user, uid \(uid)), or for good a udev rule "
                            + "(SUBSYSTEM==\"vfio\", OWNER=\"\(uid)\")"))
        }
        return f
    }
}

extension DoctorFinding {
    enum CodingKeys: String, CodingKey { case id, status, title, detail, fix }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(status, forKey: .status)
        try c.encode(title, forKey: .title)
        try c.encode(detail, forKey: .detail)
        try c.encode(fix, forKey: .fix)
    }
}
