// Targets for what VFIOKit reads from files: sysfs and procfs, and its binding state file.
@testable import VFIOHost
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A sysfs/procfs tree in a temporary directory, made once per process: one PCI
/// device (0000:00:03.0) with a block and a network child, its IOMMU group, an
/// Intel IOMMU, and the proc files. Each input rewrites the files' contents.
final class SysfsTree: Sendable {
    static let shared = SysfsTree()
    let root: String
    let device = "/sys/bus/pci/devices/0000:00:03.0"
    /// The files whose contents come from the input, in order (pieces split at NUL bytes).
    let files: [String]

    init() {
        // Under VFIOKIT_FUZZ_SCRATCH (Scripts/fuzz.sh makes one on /dev/shm and removes it), else
        // /dev/shm: each input rewrites some twenty files, which a disk file system makes slow.
        let scratch = getenv("VFIOKIT_FUZZ_SCRATCH").map { String(cString: $0) } ?? "/dev/shm"
        var template = Array((scratch + "/vfiokit-fuzz-sysfs.XXXXXX").utf8CString)
        // Safety: mkdtemp writes into the NUL-terminated template buffer it is given, in place.
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else { fatalError("mkdtemp failed") }
        root = String(cString: template.withUnsafeBufferPointer { $0.baseAddress! })
        let d = device
        files = [
            d + "/vendor", d + "/device", d + "/class", d + "/subsystem_vendor", d + "/subsystem_device",
            d + "/driver_override", d + "/numa_node", d + "/config", d + "/boot_vga",
            "/sys/kernel/iommu_groups/7/type", "/sys/class/iommu/dmar0/intel-iommu/ecap",
            "/proc/self/mountinfo", "/proc/swaps", "/proc/interrupts", "/sys/class/tty/console/active",
            d + "/block/nvme0n1/dev", d + "/net/eth0/operstate", d + "/net/eth0/flags", d + "/virtio1/mount_tag",
        ]
        for dir in [d + "/block/nvme0n1/holders", d + "/net/eth0", d + "/virtio1", d + "/vfio-dev/vfio0",
                    "/sys/kernel/iommu_groups/7/devices", "/sys/class/iommu/dmar0/intel-iommu",
                    "/sys/class/block", "/sys/class/net", "/sys/bus/pci/drivers/vfio-pci", "/proc/self/fd", "/sys/class/tty/console"] {
            mkdirs(root + dir)
        }
        for f in files { put(f, []) }
        symlink("../../../../class/block", root + d + "/block/nvme0n1/subsystem")
        symlink("../../../../class/net", root + d + "/net/eth0/subsystem")
        symlink("../../../../../bus/pci/devices/0000:00:03.0", root + "/sys/kernel/iommu_groups/7/devices/0000:00:03.0")
        symlink("../../../bus/pci/drivers/vfio-pci", root + d + "/driver")
    }

    func mkdirs(_ path: String) {
        var p = ""
        for part in path.split(separator: "/") { p += "/" + part; mkdir(p, 0o755) }
    }

    func put(_ file: String, _ bytes: [UInt8]) {
        let fd = open(root + file, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { fatalError("cannot write \(root + file)") }
        // Safety: `bytes` is valid for its count during the call.
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// The device's iommu_group link points at a group named `name` (none when it is not a file name).
    func setGroupLink(_ name: [UInt8]) {
        let link = root + device + "/iommu_group"
        unlink(link)
        let s = String(decoding: name, as: UTF8.self)
        guard !s.isEmpty, s.utf8.count < 200, !s.contains("/"), s != ".", s != ".." else { return }
        symlink("../../../../kernel/iommu_groups/" + s, link)
    }
}

@Sendable func fuzzSysfs(_ bytes: [UInt8]) {
    let tree = SysfsTree.shared
    let pieces = bytes.split(separator: 0, maxSplits: tree.files.count, omittingEmptySubsequences: false).map(Array.init)
    tree.setGroupLink(pieces.first ?? [])
    for (i, f) in tree.files.enumerated() { tree.put(f, i + 1 < pieces.count ? pieces[i + 1] : []) }
    let host = PCIHost(root: tree.root)
    let a = PCIAddress(domain: 0, bus: 0, device: 3, function: 0)
    _ = host.devices()
    if let dev = try? host.device(a) {
        fuzzCheck(dev.address == a, "the device's address changed")
        if let t = dev.headerType { fuzzCheck(t < 0x80, "header type 0x\(String(t, radix: 16)) keeps the multifunction bit") }
        _ = host.readiness(of: dev, openNodes: [:])
    }
    _ = try? host.group(of: a)
    _ = host.groups()
    _ = host.iommus()
    _ = host.interruptRemapping()
    _ = host.uses(of: a, openNodes: [:])
    if let v = try? host.viability(of: a) {
        _ = v.blockers(requireVFIO: true)
        _ = v.fixes(for: a)
    }
}

/// The binding state file: any text either parses into a record that survives a
/// write and a read unchanged, or is refused; a parsed record's checks never trap.
@Sendable func fuzzBindingRecord(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    guard let record = BindingRecord(json: text) else { return }
    _ = record.problem(for: record.address)
    _ = record.problem(for: PCIAddress(domain: 0, bus: 0, device: 3, function: 0))
    let again = BindingRecord(json: record.json)
    fuzzCheck(again == record, "a record does not survive its own file: \(record) -> \(String(describing: again))")
}
