#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What bind remembers about a device so unbind --restore can give it back:
/// one JSON file per device in ``PCIHost/stateDirectory`` (`/run/vfiokit/bindings/BDF.json`).
///
/// JSON keys: `address`, `original_driver` (null when the device had none),
/// `original_driver_override` (null when unset), `bound_to`.
public struct BindingRecord: Sendable, Equatable, Codable {
    public var address: PCIAddress
    public var originalDriver: String?
    public var originalDriverOverride: String?
    public var boundTo: String

    public init(address: PCIAddress, originalDriver: String?, originalDriverOverride: String?, boundTo: String) {
        self.address = address
        self.originalDriver = originalDriver
        self.originalDriverOverride = originalDriverOverride
        self.boundTo = boundTo
    }

    enum CodingKeys: String, CodingKey {
        case address
        case originalDriver = "original_driver"
        case originalDriverOverride = "original_driver_override"
        case boundTo = "bound_to"
    }

    /// The file's text (flat JSON, written without Foundation).
    var json: String {
        func q(_ s: String?) -> String {
            guard let s else { return "null" }
            var o = "\""
            for ch in s.unicodeScalars {
                switch ch {
                case "\"": o += "\\\""
                case "\\": o += "\\\\"
                case "\n": o += "\\n"
                default: o.unicodeScalars.append(ch)
                }
            }
            return o + "\""
        }
        return "{\"address\": \(q(address.description)), \"original_driver\": \(q(originalDriver)), "
            + "\"original_driver_override\": \(q(originalDriverOverride)), \"bound_to\": \(q(boundTo))}\n"
    }

    /// Parses what ``json`` wrote (a flat object of strings and nulls).
    init?(json text: String) {
        var fields: [String: String?] = [:]
        let s = Array(text.unicodeScalars)
        var i = 0
        func skip() { while i < s.count, s[i] == " " || s[i] == "\n" || s[i] == "\t" || s[i] == "," || s[i] == ":" { i += 1 } }
        func string() -> String? {
            guard i < s.count, s[i] == "\"" else { return nil }
            i += 1
            var o = String.UnicodeScalarView()
            while i < s.count, s[i] != "\"" {
                if s[i] == "\\", i + 1 < s.count {
                    i += 1
                    o.append(s[i] == "n" ? "\n" : s[i])
                } else { o.append(s[i]) }
                i += 1
            }
            i += 1
            return String(o)
        }
        skip()
        guard i < s.count, s[i] == "{" else { return nil }
        i += 1
        while true {
            skip()
            if i >= s.count || s[i] == "}" { break }
            guard let key = string() else { return nil }
            skip()
            if i + 4 <= s.count, String(String.UnicodeScalarView(s[i..<(i + 4)])) == "null" {
                fields[key] = .some(nil); i += 4
            } else if let v = string() {
                fields[key] = .some(v)
            } else { return nil }
        }
        guard let a = fields["address"] ?? nil, let addr = try? PCIAddress(parsing: a),
              let bound = fields["bound_to"] ?? nil else { return nil }
        self.init(address: addr, originalDriver: fields["original_driver"] ?? nil,
                  originalDriverOverride: fields["original_driver_override"] ?? nil, boundTo: bound)
    }
}

/// The result of a bind or unbind, for reports. JSON keys: `address`,
/// `previous_driver`, `driver`, `driver_override`, `vfio_cdev`, `changed`,
/// `notes` (sentences about the group and the state kept).
public struct BindingOutcome: Sendable, Equatable, Codable {
    public var address: PCIAddress
    public var previousDriver: String?
    public var driver: String?
    public var driverOverride: String?
    public var vfioCdev: String?
    /// False when the device was already where it was asked to be.
    public var changed: Bool
    public var notes: [String]

    enum CodingKeys: String, CodingKey {
        case address, driver, changed, notes
        case previousDriver = "previous_driver", driverOverride = "driver_override", vfioCdev = "vfio_cdev"
    }
}

extension PCIHost {
    /// How long bind/unbind wait for a probe to settle (some drivers, nvme among
    /// them, probe asynchronously).
    static let probeTimeoutMilliseconds = 10_000

    func recordPath(_ a: PCIAddress) -> String { stateDirectory + "/" + a.description + ".json" }

    /// Runs `body` holding an exclusive flock on `stateDirectory/.lock`, so two
    /// vfioctl processes never interleave the steps of a bind or unbind.
    func withBindingLock<R>(_ body: () throws(VFIOError) -> R) throws(VFIOError) -> R {
        try makeDirectories(stateDirectory)
        let lockPath = stateDirectory + "/.lock"
        let fd = path(lockPath).withCString { Glibc.open($0, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        if fd < 0 { throw VFIOError(operation: "open", errno: .init(rawValue: errno), object: lockPath) }
        defer { _ = Glibc.close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { throw VFIOError(operation: "flock", errno: .init(rawValue: errno), object: lockPath) }
        }
        return try body()
    }

    /// The remembered original driver of a device, if bind recorded one.
    public func bindingRecord(_ a: PCIAddress) -> BindingRecord? {
        read(recordPath(a)).flatMap(BindingRecord.init(json:))
    }

    func saveRecord(_ r: BindingRecord) throws(VFIOError) {
        try makeDirectories(stateDirectory)
        let tmp = recordPath(r.address) + ".tmp"
        try writeFile(r.json, to: tmp, create: true)
        if path(tmp).withCString({ src in path(recordPath(r.address)).withCString { rename(src, $0) } }) != 0 {
            throw VFIOError(operation: "rename", errno: .init(rawValue: errno), object: recordPath(r.address))
        }
    }

    /// Waits until the device's driver is `want` (nil: any driver, or none when `none`).
    func waitForDriver(_ a: PCIAddress, _ want: String?, timeoutMilliseconds: Int = PCIHost.probeTimeoutMilliseconds) -> String? {
        var waited = 0
        while true {
            let cur = linkName(sysfsPath(a) + "/driver")
            if let want { if cur == want { return cur } } else if cur != nil { return cur }
            if waited >= timeoutMilliseconds || sysfsWriter != nil { return cur }
            usleep(20_000); waited += 20
        }
    }

    /// Detaches the device from whatever driver it has.
    func detachDriver(_ a: PCIAddress) throws(VFIOError) {
        guard let drv = linkName(sysfsPath(a) + "/driver") else { return }
        try write(a.description, to: "/sys/bus/pci/drivers/\(drv)/unbind")
    }

    /// Sets `driver_override` (nil clears it).
    func setOverride(_ a: PCIAddress, _ value: String?) throws(VFIOError) {
        try write(value ?? "\n", to: sysfsPath(a) + "/driver_override")
    }

    func probe(_ a: PCIAddress) throws(VFIOError) {
        try write(a.description, to: "/sys/bus/pci/drivers_probe")
    }

    /// Binds one device to `driver` (vfio-pci by default) through
    /// `driver_override` and `drivers_probe` — never `new_id`, which would make
    /// the driver grab every device with those ids.
    ///
    /// Steps: refuse a device in use (``uses(of:)``) unless `force`; record the
    /// original driver in ``stateDirectory``; set the override; unbind the current
    /// driver; probe; verify the new driver is bound. When any step fails, the
    /// device is put back (override restored, original driver reprobed) and the
    /// error says what failed. The override stays set afterwards so that a
    /// rescan or module reload does not hand the device back to its old driver;
    /// ``unbind(_:restore:)`` clears it.
    ///
    /// This binds one device only; ``bind(_:group:force:)`` checks the group.
    public func bindDevice(_ a: PCIAddress, to driver: String = "vfio-pci", force: Bool = false) throws(VFIOError) -> BindingOutcome {
        try withBindingLock { () throws(VFIOError) in try bindDeviceLocked(a, to: driver, force: force) }
    }

    func bindDeviceLocked(_ a: PCIAddress, to driver: String, force: Bool) throws(VFIOError) -> BindingOutcome {
        let dev = try device(a)
        if dev.driver == driver {
            return BindingOutcome(address: a, previousDriver: driver, driver: driver, driverOverride: dev.driverOverride,
                                  vfioCdev: dev.vfioCdev, changed: false, notes: ["\(a) was already bound to \(driver)"])
        }
        if driver == "vfio-pci" || driver.hasSuffix("vfio-pci") {
            guard dev.iommuGroup != nil else { throw noGroupError(a) }
            if dev.isBridge {
                throw .invalid("bind", "\(a) is a PCI bridge (\(dev.className)); vfio-pci does not take bridges",
                               object: a.description, hint: "bridges may stay on pcieport or without a driver: they do not block their group")
            }
        }
        guard driverRegistered(driver) else {
            throw .invalid("bind", "the \(driver) driver is not loaded (/sys/bus/pci/drivers/\(driver) does not exist)",
                           object: a.description, hint: "load it: `modprobe \(driver)`")
        }
        if !force {
            let u = uses(of: a)
            if !u.isEmpty {
                throw .invalid("bind", "\(a) is in use through its \(dev.driver ?? "kernel") driver: "
                               + u.map(\.detail).joined(separator: "; "),
                               object: a.description,
                               hint: "stop using it first (unmount, swapoff, `ip link set DEV down`), or pass --force to take it anyway")
            }
        }
        // Remember the original only on the first bind: a second bind keeps the first record.
        let existing = bindingRecord(a)
        let record = existing ?? BindingRecord(address: a, originalDriver: dev.driver,
                                                      originalDriverOverride: dev.driverOverride, boundTo: driver)
        var newRecord = record
        newRecord.boundTo = driver
        try saveRecord(newRecord)
        do throws(VFIOError) {
            try setOverride(a, driver)
            try detachDriver(a)
            try probe(a)
            let now = waitForDriver(a, driver)
            guard now == driver else {
                throw VFIOError.invalid("bind", "\(a) did not bind to \(driver) after drivers_probe (driver now: \(now ?? "none"))",
                                        object: a.description,
                                        hint: "the kernel log (dmesg) has the driver's probe error; the device was put back to \(dev.driver ?? "no driver")")
            }
        } catch {
            restore(a, driver: dev.driver, override: dev.driverOverride)
            if let existing { try? saveRecord(existing) } else { try? remove(recordPath(a)) }
            throw error
        }
        let after = try device(a)
        var notes: [String] = []
        if let o = dev.driver { notes.append("unbound from \(o); `vfioctl unbind \(a) --restore` gives it back") }
        // A cdev may appear a moment after the probe returns.
        var cdev = after.vfioCdev
        if cdev == nil && driver == "vfio-pci" && sysfsWriter == nil {
            for _ in 0..<50 where cdev == nil { usleep(20_000); cdev = list(sysfsPath(a) + "/vfio-dev").first }
        }
        return BindingOutcome(address: a, previousDriver: dev.driver, driver: after.driver, driverOverride: after.driverOverride,
                              vfioCdev: cdev, changed: true, notes: notes)
    }

    /// Best effort: puts the device back on `driver` with `override`, as it was.
    func restore(_ a: PCIAddress, driver: String?, override: String?) {
        let cur = linkName(sysfsPath(a) + "/driver")
        if cur != driver { try? detachDriver(a) }
        try? setOverride(a, override)
        if let driver, linkName(sysfsPath(a) + "/driver") != driver {
            try? probe(a)
            if waitForDriver(a, driver) != driver {
                try? write(a.description, to: "/sys/bus/pci/drivers/\(driver)/bind")
                _ = waitForDriver(a, driver, timeoutMilliseconds: 2000)
            }
        }
    }

    /// Binds a device to vfio-pci after checking its group.
    ///
    /// Without `group`: refuses when another member of the group is on a kernel
    /// driver that uses the DMA API (the group would not be viable), naming it,
    /// unless `force`. With `group`: binds every endpoint member of the group
    /// (bridges stay as they are); when one fails, the members this call
    /// changed are put back. Returns one outcome per device changed or checked.
    public func bind(_ a: PCIAddress, group: Bool = false, force: Bool = false, driver: String = "vfio-pci") throws(VFIOError) -> [BindingOutcome] {
        try withBindingLock { () throws(VFIOError) in try bindLocked(a, group: group, force: force, driver: driver) }
    }

    func bindLocked(_ a: PCIAddress, group: Bool, force: Bool, driver: String) throws(VFIOError) -> [BindingOutcome] {
        let dev = try device(a)
        guard let gid = dev.iommuGroup else { throw noGroupError(a) }
        let v = try viability(ofGroup: gid)
        let others = v.members.filter { $0.address != a }
        if !group {
            let blockers = others.filter { $0.status == .blocking }
            if !blockers.isEmpty && !force {
                throw .invalid(
                    "bind", "IOMMU group \(gid) is not viable: \(a) shares it with "
                        + blockers.map { "\($0.address) (bound to \($0.driver ?? "?"))" }.joined(separator: ", ")
                        + "; VFIO cannot use any member while one is on a kernel driver",
                    object: a.description,
                    hint: "bind the whole group: `vfioctl bind \(a) --group` (or unbind the others)")
            }
            var out = try bindDeviceLocked(a, to: driver, force: force)
            if !others.isEmpty {
                out.notes.append("IOMMU group \(gid) also holds " + others.map { "\($0.address) (\($0.reason))" }.joined(separator: ", ")
                                 + (blockers.isEmpty ? "; the group is viable" : "; the group is NOT viable until they are unbound"))
            }
            return [out]
        }
        // Whole group: check everything first, then change.
        var targets: [PCIDevice] = []
        for m in v.members {
            let d = try device(m.address)
            if d.isBridge {
                if m.status == .blocking {
                    throw .invalid("bind", "bridge \(m.address) in IOMMU group \(gid) is bound to \(m.driver ?? "?"), which blocks the group",
                                   object: a.description, hint: "unbind it first: `vfioctl unbind \(m.address)`")
                }
                continue
            }
            if d.driver == driver { continue }
            if !force {
                let u = uses(of: m.address)
                if !u.isEmpty {
                    throw .invalid("bind", "\(m.address) in IOMMU group \(gid) is in use: " + u.map(\.detail).joined(separator: "; "),
                                   object: m.address.description, hint: "stop using it first, or pass --force")
                }
            }
            targets.append(d)
        }
        var done: [(PCIDevice, BindingOutcome)] = []
        for d in targets {
            do throws(VFIOError) {
                done.append((d, try bindDeviceLocked(d.address, to: driver, force: true)))
            } catch {
                for (prev, _) in done.reversed() {
                    restore(prev.address, driver: prev.driver, override: prev.driverOverride)
                    try? remove(recordPath(prev.address))
                }
                var e = error
                e.detail = (e.detail ?? "") + "; the \(done.count) member(s) bound before it were put back"
                throw e
            }
        }
        var outcomes = done.map(\.1)
        if outcomes.isEmpty {
            outcomes.append(BindingOutcome(address: a, previousDriver: dev.driver, driver: dev.driver, driverOverride: dev.driverOverride,
                                           vfioCdev: dev.vfioCdev, changed: false, notes: ["every endpoint of IOMMU group \(gid) was already on \(driver)"]))
        }
        return outcomes
    }

    /// Unbinds a device from its driver.
    ///
    /// Without `restore`: detaches the driver and clears the override bind set;
    /// the device is left without a driver (the record of its original driver
    /// stays, so a later `restore` still works). With `restore`: detaches,
    /// puts back the original `driver_override`, reprobes, and verifies the
    /// original driver (from the record bind wrote) is bound again; without a
    /// record the kernel picks the driver. Refuses when a process still has
    /// the device's VFIO node open (vfio-pci's remove would block until it
    /// closes), unless `force`.
    public func unbind(_ a: PCIAddress, restore: Bool = false, force: Bool = false) throws(VFIOError) -> BindingOutcome {
        try withBindingLock { () throws(VFIOError) in try unbindLocked(a, restore: restore, force: force) }
    }

    func unbindLocked(_ a: PCIAddress, restore: Bool, force: Bool) throws(VFIOError) -> BindingOutcome {
        let dev = try device(a)
        let record = bindingRecord(a)
        if !force, dev.isBoundToVFIO {
            let holders = vfioOpeners(of: dev)
            if !holders.isEmpty {
                throw .invalid("unbind", "\(a) is open through VFIO by " + holders.joined(separator: ", ")
                               + "; vfio-pci would wait for it to close", object: a.description,
                               hint: "stop that process first, or pass --force")
            }
        }
        if !force, !dev.isBoundToVFIO, dev.driver != nil {
            let u = uses(of: a)
            if !u.isEmpty {
                throw .invalid("unbind", "\(a) is in use through \(dev.driver!): " + u.map(\.detail).joined(separator: "; "),
                               object: a.description, hint: "stop using it first, or pass --force")
            }
        }
        var notes: [String] = []
        if !restore {
            try detachDriver(a)
            if dev.driverOverride != nil {
                try setOverride(a, record?.originalDriverOverride)
            }
            let after = try device(a)
            if record != nil { notes.append("the original driver (\(record?.originalDriver ?? "none")) is remembered: `vfioctl unbind \(a) --restore` brings it back") }
            return BindingOutcome(address: a, previousDriver: dev.driver, driver: after.driver, driverOverride: after.driverOverride,
                                  vfioCdev: after.vfioCdev, changed: dev.driver != nil, notes: notes)
        }
        let want = record?.originalDriver
        if dev.driver != nil && dev.driver != want { try detachDriver(a) }
        try setOverride(a, record?.originalDriverOverride)
        if linkName(sysfsPath(a) + "/driver") == nil { try probe(a) }
        let now = waitForDriver(a, want)
        if let want, now != want {
            // drivers_probe found nothing; try the driver's own bind file once.
            try? write(a.description, to: "/sys/bus/pci/drivers/\(want)/bind")
            let again = waitForDriver(a, want)
            guard again == want else {
                throw .invalid("unbind --restore", "\(a) did not go back to \(want) (driver now: \(again ?? "none"))",
                               object: a.description,
                               hint: "is the \(want) module loaded (`modprobe \(want)`)? dmesg has its probe error")
            }
        }
        try remove(recordPath(a))
        if record == nil {
            notes.append("no record of an original driver: the kernel chose \(now ?? "no driver")")
        }
        let after = try device(a)
        return BindingOutcome(address: a, previousDriver: dev.driver, driver: after.driver, driverOverride: after.driverOverride,
                              vfioCdev: after.vfioCdev, changed: dev.driver != after.driver, notes: notes)
    }

    /// Processes holding the device's VFIO cdev or group node open (`pid (comm)`).
    public func vfioOpeners(of dev: PCIDevice) -> [String] {
        var nodes: Set<String> = []
        if let c = dev.vfioCdevPath { nodes.insert(c) }
        if let g = dev.vfioGroupPath { nodes.insert(g) }
        guard !nodes.isEmpty else { return [] }
        let me = String(getpid())
        var out: [String] = []
        for pid in list("/proc") where pid.first?.isNumber == true && pid != me {
            for fd in list("/proc/\(pid)/fd") {
                if let t = readLink("/proc/\(pid)/fd/\(fd)"), nodes.contains(t) {
                    out.append("pid \(pid) (\(readTrimmed("/proc/\(pid)/comm") ?? "?"))")
                    break
                }
            }
        }
        return out
    }
}

extension BindingOutcome {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(address, forKey: .address)
        try c.encode(previousDriver, forKey: .previousDriver)
        try c.encode(driver, forKey: .driver)
        try c.encode(driverOverride, forKey: .driverOverride)
        try c.encode(vfioCdev, forKey: .vfioCdev)
        try c.encode(changed, forKey: .changed)
        try c.encode(notes, forKey: .notes)
    }
}

extension BindingRecord {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(address, forKey: .address)
        try c.encode(originalDriver, forKey: .originalDriver)
        try c.encode(originalDriverOverride, forKey: .originalDriverOverride)
        try c.encode(boundTo, forKey: .boundTo)
    }
}
