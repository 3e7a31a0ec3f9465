import VFIOKit
import VFIOSystem

/// How `vfioctl doctor` words the library's findings (facts and remedies):
/// a title, a detail sentence and a fix.
public enum DoctorWording {
    public static func title(_ f: DoctorFinding) -> String {
        switch f.check {
        case .kernel: "Kernel"
        case .iommuMissing, .iommuCoversNothing, .iommuPresent: "IOMMU"
        case .iommuPassthrough: "IOMMU default domain"
        case .interruptRemapping: "Interrupt remapping"
        case .unsafeInterruptsParameter(let module, _): "\(module).allow_unsafe_interrupts"
        case .cacheCoherencyPredicted, .deviceCacheCoherency, .deviceCacheCoherencyUnknown: "Cache coherency"
        case .iommufdNode, .iommufdNodeMissing: "/dev/iommu (iommufd)"
        case .containerNode, .containerNodeMissing: "/dev/vfio/vfio (legacy container)"
        case .cdevSupport: "VFIO device cdevs"
        case .vfioPCIDriver: "vfio-pci driver"
        case .memlock, .memlockUnreadable: "Locked-memory limit"
        case .dmaEntryLimit: "type1 DMA mapping limit"
        case .hugePages: "Huge pages"
        case .groupUnchecked(let g, _), .groupViable(let g, _): "IOMMU group \(g)"
        case .groupNotViable(let v): "IOMMU group \(v.group)"
        case .deviceMissing(let a, _): "Device \(a)"
        case .device(let d): "Device \(d.address)"
        case .deviceWithoutGroup: "IOMMU group"
        case .deviceGroupUnchecked(_, let g, _): "IOMMU group \(g)"
        case .deviceGroup(_, let v, _): "IOMMU group \(v.group)"
        case .deviceDriver: "Driver"
        case .deviceHolders: "Owner"
        case .deviceNode(let n): n.path
        }
    }

    public static func detail(_ f: DoctorFinding) -> String {
        switch f.check {
        case .kernel(let release):
            return "Linux \(release)"
        case .iommuMissing:
            return "no IOMMU is registered (/sys/class/iommu is empty) and there are no IOMMU groups"
        case .iommuCoversNothing(let ioms, let onlySelftest):
            let kinds = names(ioms)
            return "\(kinds.isEmpty ? "no IOMMU" : kinds) registered, but "
                + (onlySelftest ? "only the iommufd selftest IOMMU, which translates no real device"
                                : "no device is in an IOMMU group")
        case .iommuPresent(let ioms, let groups):
            return "\(ioms.count) IOMMU\(ioms.count == 1 ? "" : "s"): \(names(ioms)); \(groups) IOMMU groups"
        case .iommuPassthrough:
            return "the kernel runs host devices in passthrough (iommu=pt); VFIO still isolates the devices it owns"
        case .interruptRemapping(let ir, let allowed):
            switch ir.state {
            case .enabled: return "enabled: \(ir.evidence)"
            case .disabled:
                return "absent: \(ir.evidence). Without it a device could forge MSIs, so VFIO refuses to bind devices "
                    + "(VFIO_DEVICE_BIND_IOMMUFD / VFIO_SET_IOMMU fail with EPERM)"
                    + (allowed ? "; allow_unsafe_interrupts is set, so VFIO works without isolation" : "")
            case .unknown: return "unknown: \(ir.evidence)"
            }
        case .unsafeInterruptsParameter(_, let isSet):
            return isSet ? "set (Y): devices without interrupt isolation are allowed; a device could inject interrupts"
                : "not set (N): the safe default; VFIOKit reports it and never sets it"
        case .cacheCoherencyPredicted(let predictions):
            let parts = predictions.map { p -> String in
                let why: String = switch p.iommu.kind {
                case .intelVTd: "VT-d ECAP.SC (snoop control) is \(p.enforced.map { $0 ? "1" : "0" } ?? "unreadable")"
                case .amdVi: "AMD-Vi page tables always set the force-coherent bit"
                case .virtio: "virtio-iommu cannot block no-snoop DMA"
                case .selftest, .other: "unknown IOMMU"
                }
                let word = p.enforced.map { $0 ? "enforced" : "NOT enforced" } ?? "unknown"
                return "\(p.iommu.name): \(word) (\(why))"
            }
            return "expected for VFIO domains: " + parts.joined(separator: "; ")
                + ". Enforced means the IOMMU blocks no-snoop DMA and a VM needs no wbinvd emulation; not enforced "
                + "means a device can bypass the CPU caches and a VM must emulate wbinvd. The kernel decides; VFIOKit "
                + "reports it and never changes it. `vfioctl doctor` with a device address and `vfioctl attach` ask the kernel "
                + "(VFIO_DMA_CC_IOMMU) for a device"
        case .iommufdNode(let node, let probe):
            var detail = "present" + permissions(node)
            switch probe {
            case .all(let n)?: detail += "; the kernel has all \(n) iommufd ioctls VFIOKit uses"
            case .missing(let requests)?:
                detail += "; this kernel lacks " + requests.map { "\($0.name) (Linux \($0.introduced))" }.joined(separator: ", ")
            case .cannotOpen(let e)?: detail += "; cannot open it: \(e.errno?.name ?? "error")"
            case nil: break
            }
            return detail
        case .iommufdNodeMissing, .containerNodeMissing:
            return f.check == .iommufdNodeMissing ? "missing" : "missing: only the iommufd cdev path is available"
        case .containerNode(let node):
            return "present" + permissions(node)
        case .cdevSupport(let supported, let loaded):
            return supported ? "supported (/sys/class/vfio-dev exists)"
                : loaded ? "VFIO is loaded but has no cdev support" : "VFIO is not loaded"
        case .vfioPCIDriver(let loaded):
            return loaded ? "loaded" : "not loaded (/sys/bus/pci/drivers/vfio-pci missing)"
        case .memlock(let m):
            var detail = "RLIMIT_MEMLOCK is \(m.limit.map(formatBytes) ?? "unlimited")"
            if m.ipcLock { detail += "; this process has CAP_IPC_LOCK, so iommufd does not count its pinned pages" }
            if let want = m.wanted { detail += "; asked to pin \(formatBytes(want))" }
            if f.status == .warn { detail += "; DMA mappings count against it" }
            return detail
        case .memlockUnreadable(let e):
            return "RLIMIT_MEMLOCK could not be read: " + CLIWording.message(e)
        case .dmaEntryLimit(let limit):
            return "vfio_iommu_type1.dma_entry_limit = \(limit) mappings per container (legacy path only; iommufd has no such limit)"
        case .hugePages(let pools, let thp):
            var parts = pools.map { "\($0.name.replacingPrefix("hugepages-", with: "")): \($0.reserved) reserved, \($0.free) free" }
            if let thp { parts.append("THP \(thp)") }
            return parts.isEmpty ? "no huge page support visible" : parts.joined(separator: "; ")
        case .groupUnchecked(_, let e), .deviceGroupUnchecked(_, _, let e):
            return "could not be checked: " + CLIWording.message(e)
        case .groupNotViable(let v):
            return v.summary
        case .groupViable(_, let onVFIO):
            return "viable; on vfio-pci: " + onVFIO.map(\.description).joined(separator: ", ")
        case .deviceMissing(_, let e), .deviceWithoutGroup(_, let e):
            return e.detail ?? CLIWording.message(e)
        case .device(let dev):
            return "\(dev.ids) \(dev.className), driver \(dev.driver ?? "none")"
                + (dev.driverOverride.map { ", driver_override \($0)" } ?? "")
        case .deviceGroup(let a, let v, let onVFIO):
            let memberText = v.members.map { "\($0.address) \($0.reason)" }.joined(separator: "; ")
            let blockers = v.members.filter { $0.address != a && ($0.status == .blocking || $0.status == .unreadable) }
            if blockers.isEmpty { return (onVFIO ? "viable: " : "viable once \(a) is on vfio-pci: ") + memberText }
            return "not viable: " + blockers.map(\.blockingText).joined(separator: ", ") + " (members: \(memberText))"
        case .deviceDriver(let dev, let uses):
            if dev.isBoundToVFIO {
                return "bound to \(dev.driver ?? "")" + (dev.vfioCdev.map { ", cdev /dev/vfio/devices/\($0)" } ?? "")
            }
            return "bound to \(dev.driver ?? "no driver"), not vfio-pci"
                + (uses.isEmpty ? "" : "; in use: " + uses.map(\.detail).joined(separator: "; "))
        case .deviceHolders(let group, let holders):
            return "IOMMU group \(group) is held: " + holders.map(\.description).joined(separator: "; ")
                + "; the devices of one IOMMU group cannot be split between owners"
        case .deviceNode(let n):
            return "present" + permissions(n)
        case .deviceCacheCoherency(let enforced, let query):
            return CacheCoherency(enforced: enforced, query: query).text
        case .deviceCacheCoherencyUnknown(let e):
            return "could not ask: " + (e.detail ?? CLIWording.message(e))
        }
    }

    /// The finding's fix as vfioctl prints it, or nil.
    public static func fix(_ f: DoctorFinding) -> String? {
        switch f.check {
        case .deviceDriver(_, let uses) where !uses.isEmpty && !f.remedies.isEmpty:
            // What ends each use, then the bind.
            let ends = CLIWording.text(Array(f.remedies.dropLast())).map { ": " + $0 } ?? ""
            return "stop using it" + ends + "; then " + (CLIWording.text([f.remedies[f.remedies.count - 1]]) ?? "")
        case .iommufdNode(_, .missing?):
            return "features that need them are unavailable; a newer kernel has them"
        default:
            return CLIWording.text(f.remedies)
        }
    }

    static func names(_ ioms: [IOMMUInstance]) -> String {
        ioms.map { "\($0.name) (\($0.kind.rawValue))" }.joined(separator: ", ")
    }

    static func permissions(_ node: DoctorCheck.NodeAccess?) -> String {
        guard let n = node else { return "" }
        return " (\(n.status.modeString) uid \(n.status.uid) gid \(n.status.gid); this user "
            + "\(n.canReadWrite ? "can" : "cannot") open it read-write)"
    }

    /// A finding in JSON: `id`, `status`, `title`, `detail`, `fix` (null when
    /// there is nothing to do) and `remedies`.
    struct Row: Encodable {
        var finding: DoctorFinding
        enum CodingKeys: String, CodingKey { case id, status, title, detail, fix, remedies }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(finding.id, forKey: .id)
            try c.encode(finding.status, forKey: .status)
            try c.encode(DoctorWording.title(finding), forKey: .title)
            try c.encode(DoctorWording.detail(finding), forKey: .detail)
            try c.encode(DoctorWording.fix(finding), forKey: .fix)
            try c.encode(finding.remedies, forKey: .remedies)
        }
    }
}
