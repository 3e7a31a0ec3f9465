import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Something on the host that is using a device through its kernel driver.
///
/// Unbinding the driver under it would pull a mounted filesystem, a live network
/// link or the console out from under the system. JSON keys: `kind`
/// (`mounted`, `swap`, `holder`, `network-up`, `console`, `open`), `object`
/// (`nvme0n1p1`, `eth0`), `detail` (one sentence), `fix` (what ends this use,
/// in plain words, or null), `remedy` (the same as a ``Remedy``, or null).
public struct DeviceUse: Sendable, Equatable, Encodable {
    /// What kind of use it is.
    public enum Kind: String, Sendable, Codable {
        /// A filesystem on the device (or a partition of it) is mounted.
        case mounted
        /// The device (or a partition) is swap space in use.
        case swap
        /// A device-mapper or md device is stacked on it.
        case holder
        /// Its network interface is up.
        case networkUp = "network-up"
        /// The console is on it.
        case console
        /// A device node of the device (a virtio port, a tty, a block device) is open in a process.
        case openByProcess = "open"
    }
    /// What kind of use.
    public var kind: Kind
    /// What is in use: `nvme0n1p1`, `eth0`, `/dev/ttyS0`.
    public var object: String
    /// The use in one sentence.
    public var detail: String
    /// What ends this use (unmount, swap off, take the link down, stop a process).
    public var remedy: Remedy?

    /// A use of a device.
    public init(kind: Kind, object: String, detail: String, remedy: Remedy? = nil) {
        self.kind = kind
        self.object = object
        self.detail = detail
        self.remedy = remedy
    }

    /// What ends this use, in plain words.
    public var fix: String? { remedy?.description }

    enum CodingKeys: String, CodingKey { case kind, object, detail, fix, remedy }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        try c.encode(object, forKey: .object)
        try c.encode(detail, forKey: .detail)
        try c.encode(remedy.flatMap { encoder.remedyWording.words([$0]) }, forKey: .fix)
        try c.encode(remedy, forKey: .remedy)
    }
}

extension PCIHost {
    /// Who uses the device through its kernel driver: mounted or swapped-on block
    /// devices (and their partitions), block devices held by dm/md, network
    /// interfaces that are up, and the boot console (`boot_vga`).
    ///
    /// Block devices are found under the device's sysfs directory (nvme
    /// namespaces at `nvme/nvmeX/nvmeXnY`, SCSI disks deeper), compared by
    /// major:minor with `/proc/self/mountinfo` and by name with `/proc/swaps`.
    ///
    /// Also: virtio-9p filesystems mounted from the device (by `mount_tag`), the
    /// active console (`/sys/class/tty/console/active`) among its ttys, and —
    /// when `checkOpenFiles` — processes holding any of its device nodes open
    /// (`/proc/PID/fd`), which costs a scan of every process.
    public func uses(of a: PCIAddress, checkOpenFiles: Bool = true) -> [DeviceUse] {
        uses(of: a, openNodes: checkOpenFiles ? nil : [:])
    }

    /// ``uses(of:checkOpenFiles:)`` with a table from ``openDeviceNodes()``
    /// computed once for many devices; nil scans /proc for this device.
    public func uses(of a: PCIAddress, openNodes: [String: [String]]?) -> [DeviceUse] {
        let dir = sysfsPath(a)
        var blocks: [(name: String, path: String)] = []
        var nets: [(name: String, path: String)] = []
        var nodes: [String] = []
        var ttys: [String] = []
        var tags: [String] = []
        walk(dir, depth: 0) { path, name in
            if let tag = readTrimmed(path + "/mount_tag") { tags.append(tag) }
            // Class devices live in glue directories named after the class (block/, net/, nvme/).
            guard exists(path + "/dev") || exists(path + "/operstate") else { return }
            let sub = linkName(path + "/subsystem")
            if sub == "block" { blocks.append((name, path)) }
            if sub == "net" { nets.append((name, path)) }
            if sub == "tty" { ttys.append(name) }
            if exists(path + "/dev") { nodes.append("/dev/" + name) }
        }
        var uses: [DeviceUse] = []
        let mountinfo = read("/proc/self/mountinfo") ?? ""
        var mountsByDev: [String: [String]] = [:]
        var ninePMounts: [String: [String]] = [:]
        for line in mountinfo.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 4 else { continue }
            let point = String(f[4]).replacingOctalEscapes()
            mountsByDev[String(f[2]), default: []].append(point)
            // After the " - " separator: filesystem type, then source.
            if let sep = f.firstIndex(of: "-"), sep + 2 < f.count, f[sep + 1] == "9p" {
                ninePMounts[String(f[sep + 2]), default: []].append(point)
            }
        }
        for tag in tags {
            if let points = ninePMounts[tag] {
                uses.append(DeviceUse(kind: .mounted, object: tag,
                                      detail: "its 9p share \"\(tag)\" is mounted on \(points.joined(separator: ", "))",
                                      remedy: .unmount(points)))
            }
        }
        let consoles = Set((readTrimmed("/sys/class/tty/console/active") ?? "").split(separator: " ").map(String.init))
        for t in ttys where consoles.contains(t) {
            uses.append(DeviceUse(kind: .console, object: t, detail: "\(t) is the active console", remedy: .moveConsole))
        }
        let swaps = Set((read("/proc/swaps") ?? "").split(separator: "\n").dropFirst().compactMap {
            $0.split(separator: " ").first.map { String($0.split(separator: "/").last ?? "") }
        })
        for b in blocks {
            if let dev = readTrimmed(b.path + "/dev"), let points = mountsByDev[dev] {
                uses.append(DeviceUse(kind: .mounted, object: b.name,
                                      detail: "/dev/\(b.name) is mounted on \(points.joined(separator: ", "))",
                                      remedy: .unmount(points)))
            }
            if swaps.contains(b.name) {
                uses.append(DeviceUse(kind: .swap, object: b.name, detail: "/dev/\(b.name) is in use as swap",
                                      remedy: .swapOff("/dev/\(b.name)")))
            }
            let holders = list(b.path + "/holders")
            if !holders.isEmpty {
                uses.append(DeviceUse(kind: .holder, object: b.name,
                                      detail: "/dev/\(b.name) is held by \(holders.joined(separator: ", ")) (device-mapper, md or similar)",
                                      remedy: .stopStackedDevices(holders)))
            }
        }
        for n in nets {
            let oper = readTrimmed(n.path + "/operstate")
            let flags = readTrimmed(n.path + "/flags").flatMap { UInt32($0.dropFirst(2), radix: 16) } ?? 0
            if flags & 1 != 0 || oper == "up" {
                uses.append(DeviceUse(kind: .networkUp, object: n.name,
                                      detail: "network interface \(n.name) is up (operstate \(oper ?? "unknown"))",
                                      remedy: .linkDown(n.name)))
            }
        }
        if !nodes.isEmpty {
            let table = openNodes ?? openDeviceNodes()
            for node in nodes.sorted() {
                guard let who = table[node] else { continue }
                let processes = who.compactMap(Remedy.RunningProcess.init(listed:))
                uses.append(DeviceUse(kind: .openByProcess, object: node,
                                      detail: "\(node) is open in \(processes.map(\.description).joined(separator: ", "))",
                                      remedy: .stopProcesses(processes)))
            }
        }
        if readTrimmed(dir + "/boot_vga") == "1" {
            uses.append(DeviceUse(kind: .console, object: a.description,
                                  detail: "\(a) is the boot VGA device and may carry the console", remedy: .moveConsole))
        }
        return uses
    }

    /// Visits real subdirectories (never symlinks) below `dir`, to a bounded depth.
    private func walk(_ dir: String, depth: Int, _ visit: (String, String) -> Void) {
        guard depth < 7 else { return }
        for name in list(dir) {
            let p = dir + "/" + name
            if isLink(p) || !isDirectory(p) { continue }
            // Skip the big attribute folders that never hold class devices.
            if name == "power" || name == "msi_irqs" || name == "holders" || name == "slaves" || name == "queue"
                || name == "mq" || name == "trace" || name == "integrity" { continue }
            visit(p, name)
            walk(p, depth: depth + 1, visit)
        }
    }
}

extension String {
    /// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space).
    func replacingOctalEscapes() -> String {
        guard contains("\\") else { return self }
        var out = [UInt8]()
        let b = Array(utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5c, i + 4 <= b.count,
               let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v); i += 4
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
