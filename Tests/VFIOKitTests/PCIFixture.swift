import Foundation
import SystemPackage
import Synchronization
import Testing
import VFIOKit

/// A sysfs/procfs tree in a temporary directory, shaped like the kernel's,
/// plus a fake kernel that reacts to sysfs writes the way the PCI core does.
final class PCIFixture: @unchecked Sendable {
    let root: String
    let fm = FileManager.default

    init() throws {
        root = NSTemporaryDirectory() + "vfiokit-pci-\(UUID().uuidString)"
        for d in ["/sys/bus/pci/devices", "/sys/bus/pci/drivers", "/sys/kernel/iommu_groups", "/sys/class/iommu",
                  "/proc/self", "/dev", "/run"] {
            try fm.createDirectory(atPath: root + d, withIntermediateDirectories: true)
        }
        try write("/proc/self/mountinfo", "22 1 0:21 / /proc rw - proc proc rw\n")
        try write("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
        try write("/proc/interrupts", "           CPU0\n  0:        10   IO-APIC   2-edge      timer\n")
        try write("/sys/bus/pci/drivers_probe", "")
        for d in ["vfio-pci", "nvme", "pcieport", "pci-stub", "e1000e"] { try addDriver(d) }
    }

    deinit { try? fm.removeItem(atPath: root) }

    var host: PCIHost { PCIHost(root: root, sysfsWriter: kernel) }
    lazy var kernel = FixtureKernel(fixture: self)

    func write(_ p: String, _ s: String) throws {
        let full = root + p
        try fm.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try s.write(toFile: full, atomically: false, encoding: .utf8)
    }

    func link(_ p: String, to target: String) throws {
        let full = root + p
        try fm.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try? fm.removeItem(atPath: full)
        try fm.createSymbolicLink(atPath: full, withDestinationPath: target)
    }

    /// Binds `bdf` to vfio-pci and has process 4242 (qemu-system-x86) hold its
    /// VFIO cdev open, as a VMM would.
    func bindHeldByQEMU(_ bdf: String) throws -> PCIAddress {
        let a = try PCIAddress(parsing: bdf)
        _ = try host.bind(a)
        let cdev = try #require(try host.device(a).vfioCdevPath)
        try link("/proc/4242/fd/7", to: cdev)
        try write("/proc/4242/comm", "qemu-system-x86\n")
        return a
    }

    /// The error of `unbind(a, restore: true)`, which must be refused; nil
    /// (and a recorded issue) when it succeeded.
    func refusedUnbind(_ a: PCIAddress) -> VFIOError? {
        refusal("unbind") { () throws(VFIOError) in _ = try host.unbind(a, restore: true) }
    }

    /// The error of `bind(a)`, which must be refused; nil (and a recorded
    /// issue) when it succeeded.
    func refusedBind(_ a: PCIAddress) -> VFIOError? {
        refusal("bind") { () throws(VFIOError) in _ = try host.bind(a) }
    }

    private func refusal(_ what: String, _ operation: () throws(VFIOError) -> Void) -> VFIOError? {
        do { try operation() } catch { return error }
        Issue.record("\(what) succeeded")
        return nil
    }

    func read(_ p: String) -> String? { try? String(contentsOfFile: root + p, encoding: .utf8) }
    func exists(_ p: String) -> Bool { (try? fm.attributesOfItem(atPath: root + p)) != nil }

    func addDriver(_ name: String) throws {
        try fm.createDirectory(atPath: root + "/sys/bus/pci/drivers/\(name)", withIntermediateDirectories: true)
        try write("/sys/bus/pci/drivers/\(name)/bind", "")
        try write("/sys/bus/pci/drivers/\(name)/unbind", "")
    }

    func dev(_ bdf: String) -> String { "/sys/bus/pci/devices/\(bdf)" }

    /// A device with the given ids; `header` 1 makes it a bridge.
    func addDevice(_ bdf: String, vendor: UInt16, device: UInt16, cls: UInt32, driver: String? = nil,
                   group: Int? = nil, override: String? = nil, header: UInt8 = 0, numa: Int = -1) throws {
        let d = dev(bdf)
        try fm.createDirectory(atPath: root + d, withIntermediateDirectories: true)
        try write(d + "/vendor", "0x" + String(vendor, radix: 16) + "\n")
        try write(d + "/device", "0x" + String(device, radix: 16) + "\n")
        try write(d + "/subsystem_vendor", "0x1af4\n")
        try write(d + "/subsystem_device", "0x1100\n")
        try write(d + "/class", String(format: "0x%06x\n", cls))
        try write(d + "/numa_node", "\(numa)\n")
        try write(d + "/driver_override", (override ?? "(null)") + "\n")
        var cfg = [UInt8](repeating: 0, count: 64)
        cfg[0x0e] = header
        try Data(cfg).write(to: URL(fileURLWithPath: root + d + "/config"))
        if let driver { try bindLink(bdf, driver) }
        if let group {
            try link(d + "/iommu_group", to: "../../../../kernel/iommu_groups/\(group)")
            try link("/sys/kernel/iommu_groups/\(group)/devices/\(bdf)", to: "../../../../bus/pci/devices/\(bdf)")
            try write("/sys/kernel/iommu_groups/\(group)/type", "DMA\n")
        }
    }

    func bindLink(_ bdf: String, _ driver: String) throws {
        try link(dev(bdf) + "/driver", to: "../../../bus/pci/drivers/\(driver)")
        if driver == "vfio-pci" {
            try fm.createDirectory(atPath: root + dev(bdf) + "/vfio-dev/vfio\(kernel.nextCdev())", withIntermediateDirectories: true)
        }
    }

    func driver(_ bdf: String) -> String? {
        (try? fm.destinationOfSymbolicLink(atPath: root + dev(bdf) + "/driver"))?.split(separator: "/").last.map(String.init)
    }

    func override(_ bdf: String) -> String? {
        let s = read(dev(bdf) + "/driver_override")?.trimmingCharacters(in: .whitespacesAndNewlines)
        return s == "(null)" ? nil : s
    }

    /// An nvme namespace block device under the controller, with major:minor.
    func addNamespace(_ bdf: String, ctrl: String = "nvme0", name: String = "nvme0n1", devnum: String = "259:0") throws {
        let p = dev(bdf) + "/nvme/\(ctrl)/\(name)"
        try write(p + "/dev", devnum + "\n")
        try link(p + "/subsystem", to: "../../../../../../../class/block")
        try fm.createDirectory(atPath: root + p + "/holders", withIntermediateDirectories: true)
    }

    func mount(_ devnum: String, at point: String) throws {
        let cur = read("/proc/self/mountinfo") ?? ""
        try write("/proc/self/mountinfo", cur + "40 1 \(devnum) / \(point) rw,relatime - ext4 /dev/nvme0n1 rw\n")
    }

    func addNetInterface(_ bdf: String, name: String, up: Bool) throws {
        let p = dev(bdf) + "/net/\(name)"
        try write(p + "/operstate", up ? "up\n" : "down\n")
        try write(p + "/flags", up ? "0x1003\n" : "0x1002\n")
        try link(p + "/subsystem", to: "../../../../../../class/net")
    }
}

/// The PCI core's reaction to sysfs writes, on the fixture tree.
final class FixtureKernel: SysfsWriteHandler, @unchecked Sendable {
    unowned let fixture: PCIFixture
    private let state = Mutex<(log: [String], failProbe: Set<String>, failWrites: Set<String>, defaults: [String: [String]], cdev: Int)>(([], [], [], [:], 0))

    /// Writes counted for ``failWrite(number:errno:)``, and a hook run after each write.
    private let counted = Mutex<(writes: Int, failAt: Int?, errno: Int32, failed: String?,
                                 after: (@Sendable (String) -> Void)?)>((0, nil, 0, nil, nil))

    init(fixture: PCIFixture) { self.fixture = fixture }

    /// Makes the `n`th sysfs write from now (1 = the next one) fail with
    /// `errno` before it has any effect, once: what the kernel's fail-nth does
    /// to a store whose allocation fails (kernfs's write buffer,
    /// `driver_override`'s copy of the name, a probe's sysfs links).
    func failWrite(number n: Int, errno: Int32 = ENOMEM) {
        counted.withLock { $0.failAt = $0.writes + n; $0.errno = errno; $0.failed = nil }
    }
    /// The path of the write ``failWrite(number:errno:)`` made fail, once it has.
    var injectedWriteFailure: String? { counted.withLock { $0.failed } }
    /// Sysfs writes so far.
    var writeCount: Int { counted.withLock { $0.writes } }
    /// Runs `action` with the path after each write that did not fail.
    func afterEachWrite(_ action: @escaping @Sendable (String) -> Void) { counted.withLock { $0.after = action } }

    /// Every write, as "path=value".
    var log: [String] { state.withLock { $0.log } }
    /// Drivers whose probe fails (the device stays unbound).
    func failProbe(_ driver: String) { state.withLock { _ = $0.failProbe.insert(driver) } }
    /// Writes to this path fail with EIO.
    func failWrite(_ path: String) { state.withLock { _ = $0.failWrites.insert(path) } }
    /// The cause is fixed: probes and writes work again.
    func clearFailures() {
        state.withLock { $0.failProbe = []; $0.failWrites = [] }
        counted.withLock { $0.failAt = nil }
    }
    /// The driver that claims a device when nothing overrides it (drivers_probe
    /// picks it). Drivers named earlier still match the device (their bind file
    /// takes it), as a driver whose id table lists the device does.
    func setDefaultDriver(_ bdf: String, _ driver: String) {
        state.withLock { $0.defaults[bdf] = [driver] + ($0.defaults[bdf] ?? []).filter { $0 != driver } }
    }
    func nextCdev() -> Int { state.withLock { $0.cdev += 1; return $0.cdev - 1 } }

    func write(_ value: String, to path: String, host: PCIHost) throws(VFIOError) {
        let injected: Int32? = counted.withLock { c in
            c.writes += 1
            guard c.failAt == c.writes else { return nil }
            c.failAt = nil
            c.failed = path
            return c.errno
        }
        if let injected { throw VFIOError(operation: .syscall(.write), errno: Errno(rawValue: injected), object: path) }
        try react(value, to: path)
        counted.withLock { $0.after }?(path)
    }

    private func react(_ value: String, to path: String) throws(VFIOError) {
        let v = value.trimmingCharacters(in: .whitespacesAndNewlines)
        let (fail, failing, defaults) = state.withLock { s in
            s.log.append("\(path)=\(v)")
            return (s.failWrites.contains(path), s.failProbe, s.defaults)
        }
        if fail { throw VFIOError(operation: .syscall(.write), errno: .ioError, object: path) }
        let f = fixture
        if path.hasSuffix("/driver_override") {
            try? f.write(path, (v.isEmpty ? "(null)" : v) + "\n")
        } else if path.hasSuffix("/unbind") {
            // unbind_store: ENODEV unless the device is bound to this driver.
            let drv = path.split(separator: "/").dropLast().last.map(String.init) ?? ""
            guard f.driver(v) == drv else { throw VFIOError(operation: .syscall(.write), errno: .noSuchDevice, object: path) }
            try? f.fm.removeItem(atPath: f.root + f.dev(v) + "/driver")
            try? f.fm.removeItem(atPath: f.root + f.dev(v) + "/vfio-dev")
        } else if path == "/sys/bus/pci/drivers_probe" {
            guard f.driver(v) == nil else { return }
            let want = f.override(v) ?? defaults[v]?.first
            if let want, f.exists("/sys/bus/pci/drivers/\(want)"), !failing.contains(want) { try? f.bindLink(v, want) }
        } else if path.hasSuffix("/bind") {
            // bind_store: ENODEV when the driver does not match (driver_override names
            // another driver, or none is set and the driver does not claim these ids),
            // EBUSY when the device already has a driver (__driver_probe_device).
            let drv = path.split(separator: "/").dropLast().last.map(String.init) ?? ""
            let matches = f.override(v).map { $0 == drv } ?? (defaults[v]?.contains(drv) == true)
            if !matches || failing.contains(drv) { throw VFIOError(operation: .syscall(.write), errno: .noSuchDevice, object: path) }
            if f.driver(v) != nil { throw VFIOError(operation: .syscall(.write), errno: .resourceBusy, object: path) }
            try? f.bindLink(v, drv)
        } else {
            try? f.write(path, value)
        }
    }
}
