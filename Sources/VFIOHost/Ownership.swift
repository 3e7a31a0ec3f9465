import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A process that has a VFIO node of an IOMMU group open: a member's cdev
/// (`/dev/vfio/devices/vfioN`) or the group node (`/dev/vfio/N`).
///
/// The IOMMU group is the unit of ownership: the kernel gives DMA ownership of
/// a whole group to one owner (one iommufd context, or one group fd with its
/// container; drivers/iommu/iommu.c `iommu_device_claim_dma_owner`), so a
/// holder of any member keeps every other owner away from all of them.
/// JSON keys: `pid`, `command`, `node`, `member` (BDF, null for the group node).
public struct VFIOHolder: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The process that holds the node.
    public var pid: Int32
    /// `/proc/PID/comm`.
    public var command: String
    /// The node it holds open: `/dev/vfio/N` or `/dev/vfio/devices/vfioN`.
    public var node: String
    /// The member whose cdev is open; nil for the group node.
    public var member: PCIAddress?

    public var description: String {
        "pid \(pid) (\(command)) has \(node)\(member.map { " (\($0))" } ?? " (the group node)") open"
    }
}

extension PCIHost {
    /// Device nodes (`/dev/...`) open in processes other than this one: one
    /// scan of `/proc/PID/fd`, node -> (pid, command). Every holder and user
    /// check (``openDeviceNodes()``, ``vfioOpeners(of:openNodes:)``,
    /// `groupHolders(ofGroup:)`) reads this one table.
    public func deviceNodeOpeners() -> [String: [(pid: Int32, command: String)]] {
        var openers: [String: [(pid: Int32, command: String)]] = [:]
        let me = Sys.getpid(kernel)
        for name in list("/proc") {
            guard let pid = Int32(name), pid != me else { continue }
            var seen = Set<String>()
            var command: String?
            for fd in list("/proc/\(name)/fd") {
                guard let t = readLink("/proc/\(name)/fd/\(fd)"), t.hasPrefix("/dev/"), seen.insert(t).inserted else { continue }
                if command == nil { command = readTrimmed("/proc/\(name)/comm") ?? "?" }
                openers[t, default: []].append((pid, command ?? "?"))
            }
        }
        return openers
    }

    /// ``deviceNodeOpeners()`` as `pid 42 (qemu)` strings.
    public func openDeviceNodes() -> [String: [String]] {
        deviceNodeOpeners().mapValues { $0.map { Remedy.RunningProcess(pid: $0.pid, command: $0.command).description } }
    }

    /// Every process (other than this one) holding a VFIO node of group `id`:
    /// the group node or any member's cdev.
    public func groupHolders(ofGroup id: Int, openers: [String: [(pid: Int32, command: String)]]? = nil) -> [VFIOHolder] {
        let table = openers ?? deviceNodeOpeners()
        var out: [VFIOHolder] = []
        let members = (try? group(id))?.members ?? []
        var nodes: [(String, PCIAddress?)] = [("/dev/vfio/\(id)", nil)]
        for m in members { if let c = (try? device(m))?.vfioCdevPath { nodes.append((c, m)) } }
        for (node, member) in nodes {
            for o in table[node] ?? [] { out.append(VFIOHolder(pid: o.pid, command: o.command, node: node, member: member)) }
        }
        return out
    }

    /// Adds to `error` — from opening or binding a VFIO device or group — who
    /// owns the group, when the errno says ownership may be the cause:
    ///
    /// - `VFIO_DEVICE_BIND_IOMMUFD` EINVAL: the device is already bound through
    ///   another fd (drivers/vfio/vfio_main.c `vfio_df_open`: one cdev open at a time).
    /// - `VFIO_DEVICE_BIND_IOMMUFD` EPERM: another member of the group is bound to
    ///   another iommufd context (`iommu_device_claim_dma_owner`), or MSIs are not
    ///   isolated (drivers/iommu/iommufd/device.c: no interrupt remapping and
    ///   `allow_unsafe_interrupts` off). The two are told apart by the holders
    ///   found in /proc and the interrupt-remapping state.
    /// - EBUSY opening `/dev/vfio/N`, binding a cdev or getting a device fd: the
    ///   group node is open elsewhere, or a member's cdev is bound
    ///   (drivers/vfio/group.c `vfio_group_fops_open`, `vfio_device_block_group`).
    ///
    /// Other errors come back unchanged. `device` is the BDF being opened (nil
    /// when only the group is known).
    public func explainOwnership(_ error: VFIOError, device: PCIAddress?, group: Int? = nil) -> VFIOError {
        guard let code = error.errno, code == .notPermitted || code == .resourceBusy || code == .invalidArgument else { return error }
        let op = error.operation
        let groupOps: Set<VFIOError.Operation> = [.ioctl(.vfioDeviceBindIOMMUFD), .ioctl(.vfioGroupGetDeviceFD),
                                                  .ioctl(.vfioGroupSetContainer), .ioctl(.vfioSetIOMMU)]
        // A group node is /dev/vfio/N (not the container /dev/vfio/vfio, not a cdev).
        let isGroupOpen = op == .syscall(.open)
            && (error.object.map { $0.hasPrefix("/dev/vfio/") && Int($0.dropFirst(10)) != nil } ?? false)
        guard groupOps.contains(op) || isGroupOpen else { return error }
        let isBind = op == .ioctl(.vfioDeviceBindIOMMUFD)
        if code == .invalidArgument && !isBind { return error }
        guard let gid = group ?? device.flatMap({ (try? self.device($0))?.iommuGroup }) else { return error }
        let holders = groupHolders(ofGroup: gid)
        let own = holders.filter { $0.member != nil && $0.member == device }
        let mates = holders.filter { $0.member == nil || $0.member != device }
        let who = device?.description ?? "IOMMU group \(gid)"
        func processes(_ hs: [VFIOHolder]) -> [Remedy.RunningProcess] {
            var seen: [Remedy.RunningProcess] = []
            for h in hs where !seen.contains(where: { $0.pid == h.pid }) { seen.append(.init(pid: h.pid, command: h.command)) }
            return seen
        }
        func list(_ hs: [VFIOHolder]) -> String { hs.map(\.description).joined(separator: "; ") }
        let rule = "the devices of one IOMMU group cannot be split between owners (processes or iommufd contexts)"
        var e = error
        func add(_ text: String) { e.detail = (e.detail.map { $0 + ". " } ?? "") + text }

        if code == .invalidArgument {
            if !own.isEmpty {
                add("\(who) is already bound through another fd: \(list(own)); a VFIO cdev is bound by one fd at a time")
                e.remedies = [.stopProcesses(processes(own)), .advice("or use the device from that process")]
            } else {
                add("\(who) is already bound through another fd; no other process has its cdev open, so another fd of this "
                    + "process holds it (a VFIO cdev is bound by one fd at a time)")
                e.remedies = [.advice("close the other VFIODevice of \(who) in this process first")]
            }
            return e
        }
        if code == .resourceBusy {
            if !holders.isEmpty {
                add("IOMMU group \(gid) is held: \(list(holders)); \(rule)")
                e.remedies = [.stopProcesses(processes(holders)),
                              .advice("or use every device of the group from that process")]
            } else {
                add("IOMMU group \(gid) is held by this process: its group node (/dev/vfio/\(gid)) is open, or a member's "
                    + "cdev is bound to an iommufd; the group path and the cdev path cannot share a group")
                e.remedies = [.advice("close the other VFIOGroup or VFIODevice of group \(gid) in this process first")]
            }
            return e
        }
        // EPERM.
        let ir = interruptRemapping()
        let param = isBind ? "iommufd.allow_unsafe_interrupts" : "vfio_iommu_type1.allow_unsafe_interrupts"
        let paramFile = isBind ? "/sys/module/iommufd/parameters/allow_unsafe_interrupts"
            : "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
        let unsafeAllowed = readTrimmed(paramFile) == "Y"
        let msiPossible = ir.state != .enabled && !unsafeAllowed
        let msiText = "interrupt remapping is \(ir.state.rawValue) (\(ir.evidence)) and \(param) is "
            + (readTrimmed(paramFile) ?? "not readable")
        let ownershipOp = isBind
        var causes: [String] = []
        var fixes: [Remedy] = []
        if ownershipOp && !mates.isEmpty {
            causes.append("IOMMU group \(gid) is held by another owner: \(list(mates)); \(rule)")
            fixes += [.stopProcesses(processes(mates)),
                      .advice("or open \(who) in that process, bound to the same iommufd")]
        }
        if msiPossible {
            causes.append("MSIs are not isolated: \(msiText)")
            fixes += [.enableInterruptRemapping(virtioIOMMU: iommus().contains { $0.kind == .virtio }), .diagnose(device),
                      .allowUnsafeInterrupts(parameter: param)]
        }
        if causes.isEmpty {
            if ownershipOp {
                causes.append("no process holds a member of IOMMU group \(gid), and MSI isolation is not the cause (\(msiText)): "
                              + "another iommufd context of this process holds a member of the group; \(rule)")
                fixes.append(.advice("bind every device of the group to one iommufd in this process"))
            } else {
                return error
            }
        } else if ownershipOp && mates.isEmpty {
            causes.insert("no process holds a member of IOMMU group \(gid)", at: 0)
        } else if !msiPossible {
            causes.append("MSI isolation is not the cause: \(msiText)")
        }
        add(causes.joined(separator: "; "))
        e.remedies = fixes
        return e
    }
}

extension Remedy.RunningProcess {
    /// A process from an ``PCIHost/openDeviceNodes()`` entry (`pid 42 (qemu)`).
    init?(listed text: String) {
        guard text.hasPrefix("pid "), let space = text.dropFirst(4).firstIndex(of: " "),
              let pid = Int32(text[text.index(text.startIndex, offsetBy: 4)..<space]) else { return nil }
        var command = text[space...].trimmingWhitespace()
        if command.hasPrefix("(") && command.hasSuffix(")") { command = String(command.dropFirst().dropLast()) }
        self.init(pid: pid, command: command)
    }
}
