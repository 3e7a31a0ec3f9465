import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The result of a bind or unbind, for reports. JSON keys: `address`,
/// `previous_driver`, `driver`, `driver_override`, `vfio_cdev`, `changed`,
/// `notes` (sentences about the group and the state kept, each with its
/// remedy worded), `note_remedies` (each note's remedy or null).
public struct BindingOutcome: Sendable, Equatable, Encodable {
    /// The device.
    public var address: PCIAddress
    /// The driver it had before (nil: none).
    public var previousDriver: String?
    /// The driver it has now (nil: none).
    public var driver: String?
    /// Its `driver_override` now (nil: unset).
    public var driverOverride: String?
    /// Its VFIO cdev now (`vfio0`), when bound to vfio-pci.
    public var vfioCdev: String?
    /// False when the device was already where it was asked to be.
    public var changed: Bool
    /// What else the caller should know (group members left, restores), each with its remedy.
    public var notes: [BindingNote]

    enum CodingKeys: String, CodingKey {
        case address, driver, changed, notes
        case previousDriver = "previous_driver", driverOverride = "driver_override", vfioCdev = "vfio_cdev"
        case noteRemedies = "note_remedies"
    }
}

/// A sentence about a bind or unbind, and what undoes or follows it
/// (`unbound from nvme; to give it back:` and ``Remedy/restoreDriver(_:)``).
public struct BindingNote: Sendable, Equatable, ExpressibleByStringInterpolation, CustomStringConvertible {
    /// The note in words.
    public var text: String
    /// What to do about it, if anything.
    public var remedy: Remedy?

    /// A note with an optional remedy.
    public init(_ text: String, remedy: Remedy? = nil) {
        self.text = text
        self.remedy = remedy
    }

    public init(stringLiteral value: String) { self.init(value) }
    public init(stringInterpolation: DefaultStringInterpolation) { self.init(String(stringInterpolation: stringInterpolation)) }

    /// The note with its remedy worded by `wording` (plain words by default).
    public func worded(_ wording: RemedyWording = .plain) -> String {
        guard let remedy, let w = wording.words([remedy]) else { return text }
        return text + ": " + w
    }

    public var description: String { worded() }
}

extension PCIHost {
    /// How long bind/unbind wait for a driver to appear after a probe or bind.
    /// Writes to `drivers_probe` and `drivers/NAME/bind` probe synchronously
    /// (drivers/base/bus.c → `device_attach` → `__device_attach(dev, false)`:
    /// no async probing, even for drivers that prefer it, such as nvme), so
    /// the driver link is there when the write returns; this is a safety margin.
    static let probeTimeout = Duration.seconds(2)

    /// Waits until the device's driver is `want` (nil: any driver), up to
    /// `timeout`, and returns the driver it has then. A driver link that
    /// cannot be read is an error naming the readlink and its errno, never "no driver".
    func waitForDriver(_ a: PCIAddress, _ want: String?, timeout: Duration = PCIHost.probeTimeout) throws(VFIOError)
        -> String?
    {
        let step = Duration.milliseconds(20)
        var waited = Duration.zero
        while true {
            let cur: String?
            do throws(VFIOError) {
                cur = try driverLink(of: a)
            } catch {
                var e = error
                e.detail = "could not check whether \(a) is on \(want ?? "a driver")" + (e.detail.map { "; " + $0 } ?? "")
                throw e
            }
            if let want { if cur == want { return cur } } else if cur != nil { return cur }
            if waited >= timeout || sysfsWriter != nil { return cur }
            Sys.sleep(kernel, for: step); waited += step
        }
    }

    /// Detaches the device from whatever driver it has.
    func detachDriver(_ a: PCIAddress) throws(VFIOError) {
        guard let drv = try driverLink(of: a) else { return }
        if let why = DriverName.problem(drv) {
            throw .invalid(.step(.unbind), "\(a)'s driver link names \"\(drv)\", which \(why)", object: a.description)
        }
        try write(a.description, to: "/sys/bus/pci/drivers/\(drv)/unbind")
    }

    /// Sets `driver_override` (nil clears it).
    func setOverride(_ a: PCIAddress, _ value: String?) throws(VFIOError) {
        if let value, let why = DriverName.problem(value) {
            throw .invalid(.step(.setDriverOverride), "\"\(value)\" \(why)", object: a.description)
        }
        try write(value ?? "\n", to: sysfsPath(a) + "/driver_override")
    }

    func probe(_ a: PCIAddress) throws(VFIOError) {
        try write(a.description, to: "/sys/bus/pci/drivers_probe")
    }

    /// Whether a driver by this name is registered on the PCI bus; throws
    /// when that cannot be checked (an lstat error other than ENOENT), so a
    /// binding decision never takes "cannot be checked" for "not loaded".
    func driverIsRegistered(_ name: String) throws(VFIOError) -> Bool {
        try linkStatusIfPresent("/sys/bus/pci/drivers/" + name) != nil
    }

    /// Throws unless `name` is a safe driver name registered on the PCI bus.
    func requireDriver(_ name: String, _ what: VFIOError.Operation, device a: PCIAddress) throws(VFIOError) {
        if let why = DriverName.problem(name) {
            throw .invalid(what, "\"\(name)\" \(why)", object: a.description)
        }
        guard try driverIsRegistered(name) else {
            throw .invalid(what, "the \(name) driver is not loaded (/sys/bus/pci/drivers/\(name) does not exist)",
                           object: a.description, remedies: [.loadModule(name)])
        }
    }

    /// Puts the device back on `driver` (nil: no driver) with `override` as its
    /// `driver_override`, and checks that it took; throws when it did not.
    ///
    /// Never attaches a driver the device did not have: the original driver is
    /// bound through its own `bind` file (which attaches only that driver, and
    /// matches through its id table as the first probe did); only when the
    /// driver has no bind file, `driver_override` names it for one
    /// `drivers_probe`, so nothing else can match. For "no driver" the device
    /// is unbound and its override restored, and nothing is probed: the device
    /// is as it was (a later `drivers_probe` or module load may claim it, as
    /// it could before).
    func putBack(_ a: PCIAddress, driver: String?, override: String?) throws(VFIOError) {
        let what: VFIOError.Operation = .step(.putBack)
        if let driver { try requireDriver(driver, what, device: a) }
        if let o = override, let why = DriverName.problem(o) { throw .invalid(what, "driver_override \"\(o)\" \(why)", object: a.description) }
        let cur = try driverLink(of: a)
        if cur != nil && cur != driver { try detachDriver(a) }
        guard let driver else {
            try setOverride(a, override)
            if let now = try driverLink(of: a) {
                throw .invalid(what, "\(a) should have no driver but \(now) took it", object: a.description)
            }
            return
        }
        if try driverLink(of: a) == driver {
            try setOverride(a, override)
            return
        }
        let bindFile = "/sys/bus/pci/drivers/\(driver)/bind"
        if try linkStatusIfPresent(bindFile) != nil {
            try setOverride(a, override)
            try write(a.description, to: bindFile)
        } else {
            try setOverride(a, driver)
            try probe(a)
            try setOverride(a, override)
        }
        let now = try waitForDriver(a, driver)
        guard now == driver else {
            // The driver is registered (checked above): its probe refused the device.
            throw .invalid(what, "\(a) did not go back to \(driver) (driver now: \(now ?? "none"))", object: a.description,
                           remedies: [.readKernelLog(matching: [a.description])])
        }
    }

    /// Undoes a failed bind of `a`: puts the device back as `before` and the
    /// record back to `previous`. Returns `error` with what happened added:
    /// put back (verified), or not, in which case the record (naming the
    /// original driver) is kept so a restore (``unbind(_:restore:force:)``) can retry.
    func rollBack(_ a: PCIAddress, to before: PCIDevice, record previous: BindingRecord?, in dir: BindingStateDirectory,
                  after error: VFIOError) -> VFIOError {
        var e = error
        let original = previous?.originalDriver ?? before.driver
        do throws(VFIOError) {
            try putBack(a, driver: before.driver, override: before.driverOverride)
        } catch {
            e.detail = (e.detail.map { $0 + "; " } ?? "") + "\(a) could not be put back to "
                + (before.driver ?? "no driver") + ": " + (error.detail ?? error.summary)
                + "; \(dir.name)/\(a).json keeps its original driver (\(original ?? "none"))"
            e.remedies = [.advice("once the cause is fixed (dmesg has the driver's error), put \(a) back"), .restoreDriver(a)]
            return e
        }
        do throws(VFIOError) {
            try dir.restore(a, to: previous)
        } catch {
            e.detail = (e.detail.map { $0 + "; " } ?? "") + "\(a) was put back to \(before.driver ?? "no driver"), "
                + "but its record could not be restored: \(error.summary)"
            // The record left names the original driver: a restore finds the device there (or puts it
            // there) and removes the record.
            e.remedies = [.advice("\(dir.name)/\(a).json still names its original driver (\(original ?? "none")); "
                                  + "restoring it puts \(a) there and removes the record"), .restoreDriver(a)]
            return e
        }
        e.detail = (e.detail.map { $0 + "; " } ?? "") + "\(a) was put back to \(before.driver ?? "no driver") (checked)"
        return e
    }

    /// Binds one device to `driver` (vfio-pci by default) through
    /// `driver_override` and `drivers_probe` — never `new_id`, which would make
    /// the driver grab every device with those ids.
    ///
    /// Steps: refuse a device in use (`uses(of:)`) unless `force`; record the
    /// original driver in ``stateDirectory``; set the override; unbind the current
    /// driver; probe; verify the new driver is bound. When any step fails, the
    /// device is put back (override restored, original driver rebound, checked)
    /// and the error says what failed and whether the device is back; when it
    /// is not, the record stays so that ``unbind(_:restore:force:)`` can retry.
    /// The override stays set afterwards so that a rescan or module reload
    /// does not hand the device back to its old driver;
    /// ``unbind(_:restore:force:)`` clears it.
    ///
    /// This binds one device only; ``bind(_:group:force:driver:)`` checks the group.
    public func bindDevice(_ a: PCIAddress, to driver: String = "vfio-pci", force: Bool = false) throws(VFIOError) -> BindingOutcome {
        try withBindingLock { (dir) throws(VFIOError) in try bindDeviceLocked(a, to: driver, force: force, dir: dir) }
    }

    func bindDeviceLocked(_ a: PCIAddress, to driver: String, force: Bool, dir: BindingStateDirectory) throws(VFIOError) -> BindingOutcome {
        let dev = try device(a)
        if dev.driver == driver {
            return BindingOutcome(address: a, previousDriver: driver, driver: driver, driverOverride: dev.driverOverride,
                                  vfioCdev: dev.vfioCdev, changed: false, notes: ["\(a) was already bound to \(driver)"])
        }
        if VFIODrivers.isVFIOPCI(driver) {
            guard dev.iommuGroup != nil else { throw noGroupError(a) }
            if dev.isBridge {
                throw .invalid(.step(.bind), "\(a) is a PCI bridge (\(dev.className)); vfio-pci does not take bridges",
                               object: a.description,
                               remedies: [.advice("a bridge blocks its group only on a driver without managed DMA; to move "
                                                  + "it off such a driver"),
                                          .bindBridgeToStub(a, driver: dev.driver)])
            }
        }
        try requireDriver(driver, .step(.bind), device: a)
        if !force {
            let u = uses(of: a)
            if !u.isEmpty {
                throw .invalid(.step(.bind), "\(a) is in use through its \(dev.driver ?? "kernel") driver: "
                               + u.map(\.detail).joined(separator: "; "),
                               object: a.description, remedies: stopUsing(u, retry: .bindToVFIO(a)))
            }
        }
        // Remember the original only on the first bind: a second bind keeps the first record.
        let existing = try dir.load(a)
        var record = existing ?? BindingRecord(address: a, originalDriver: dev.driver,
                                               originalDriverOverride: dev.driverOverride, boundTo: driver)
        record.boundTo = driver
        try dir.save(record)
        do throws(VFIOError) {
            try setOverride(a, driver)
            try detachDriver(a)
            try probe(a)
            let now = try waitForDriver(a, driver)
            guard now == driver else {
                throw VFIOError.invalid(.step(.bind), "\(a) did not bind to \(driver) after drivers_probe (driver now: \(now ?? "none"))",
                                        object: a.description, remedies: [.readKernelLog(matching: [])])
            }
        } catch {
            throw rollBack(a, to: dev, record: existing, in: dir, after: error)
        }
        // The bind took (checked). From here on only the report is made: a read that fails now
        // must not turn a bind that took into an error (the caller would take the device for
        // untouched while it is on the new driver).
        var notes: [BindingNote] = []
        if let o = record.originalDriver { notes.append(BindingNote("unbound from \(o); to give it back", remedy: .restoreDriver(a))) }
        let after = reread(a, known: "\(a) is on \(driver) (checked)", notes: &notes)
        // A cdev may appear a moment after the probe returns.
        var cdev = after?.vfioCdev ?? list(sysfsPath(a) + "/vfio-dev").first { $0.hasPrefix("vfio") }
        if cdev == nil && driver == "vfio-pci" && sysfsWriter == nil {
            for _ in 0..<50 where cdev == nil { Sys.sleep(kernel, for: .milliseconds(20)); cdev = list(sysfsPath(a) + "/vfio-dev").first }
        }
        return BindingOutcome(address: a, previousDriver: dev.driver, driver: after.map(\.driver) ?? driver,
                              driverOverride: after.map(\.driverOverride) ?? driver, vfioCdev: cdev, changed: true, notes: notes)
    }

    /// The device read again for an outcome, after a change that was made and
    /// checked; nil (with a note saying so after `known`) when it cannot be
    /// read: reporting a change that took must not turn it into an error.
    func reread(_ a: PCIAddress, known: String, notes: inout [BindingNote]) -> PCIDevice? {
        do throws(VFIOError) {
            return try device(a)
        } catch {
            notes.append(BindingNote("\(known), but it could not be read again for this report: \(error.summary)"))
            return nil
        }
    }

    /// The remedies that end each use, then the retry (and the retry forced).
    func stopUsing(_ uses: [DeviceUse], retry: Remedy) -> [Remedy] {
        uses.map { $0.remedy ?? .advice("end: \($0.detail)") } + [retry, .forced(retry)]
    }

    /// Binds a device to vfio-pci (or `driver`) after checking its group.
    ///
    /// Without `group`: refuses when another member of the group blocks it (on
    /// a kernel driver that uses the DMA API, or unreadable), naming it, unless
    /// `force`. With `group`: binds every endpoint member of the group (bridges
    /// stay as they are); when one fails, the members this call changed are put
    /// back as they were, records included. Returns one outcome per device
    /// changed or checked.
    public func bind(_ a: PCIAddress, group: Bool = false, force: Bool = false, driver: String = "vfio-pci") throws(VFIOError) -> [BindingOutcome] {
        try withBindingLock { (dir) throws(VFIOError) in try bindLocked(a, group: group, force: force, driver: driver, dir: dir) }
    }

    func bindLocked(_ a: PCIAddress, group: Bool, force: Bool, driver: String, dir: BindingStateDirectory) throws(VFIOError) -> [BindingOutcome] {
        let dev = try device(a)
        // A bridge goes to pci-stub (or another driver that manages DMA), alone: its group is not checked.
        if dev.isBridge && !VFIODrivers.isVFIOPCI(driver) && !group {
            return [try bindDeviceLocked(a, to: driver, force: force, dir: dir)]
        }
        guard let gid = dev.iommuGroup else { throw noGroupError(a) }
        let v = try viability(ofGroup: gid)
        let others = v.members.filter { $0.address != a }
        if !group {
            let blockers = others.filter { $0.status == .blocking || $0.status == .unreadable }
            if !blockers.isEmpty && !force {
                throw .invalid(
                    .step(.bind), "IOMMU group \(gid) is not viable: \(a) shares it with "
                        + blockers.map(\.blockingText).joined(separator: ", ")
                        + "; VFIO cannot use any member while one is on a kernel driver that does DMA",
                    object: a.description, remedies: {
                        var steps = v.fixes(for: a)
                        if !steps.contains(where: { $0.kind == .bindGroup }) { steps.append(.bindToVFIO(a)) }
                        return steps + (steps.count > 1 ? [] : [.advice("or unbind the others")])
                    }())
            }
            var out = try bindDeviceLocked(a, to: driver, force: force, dir: dir)
            if !others.isEmpty {
                out.notes.append(BindingNote("IOMMU group \(gid) also holds "
                                             + others.map { "\($0.address) (\($0.reason))" }.joined(separator: ", ")
                                             + (blockers.isEmpty ? "; the group is viable"
                                                                 : "; the group is NOT viable until they are unbound")))
            }
            return [out]
        }
        // Whole group: check everything first, then change.
        var targets: [PCIDevice] = []
        for m in v.members {
            if m.status == .unreadable {
                throw .invalid(.step(.bind), "IOMMU group \(gid): \(m.blockingText)", object: a.description,
                               remedies: [.inspect(path: "/sys/bus/pci/devices/\(m.address)/")])
            }
            let d = try device(m.address)
            if d.isBridge {
                if m.status == .blocking {
                    throw .invalid(.step(.bind), "bridge \(m.address) in IOMMU group \(gid) is bound to \(m.driver ?? "?"), which does not "
                                   + "declare managed DMA and so blocks the group; a bridge never goes to vfio-pci",
                                   object: a.description,
                                   remedies: [.advice("give the bridge pci-stub (it manages DMA; restoring the bridge's "
                                                      + "driver gives \(m.driver ?? "its driver") back)"),
                                              .bindBridgeToStub(m.address, driver: m.driver), .bindGroup(a)])
                }
                continue
            }
            if d.driver == driver { continue }
            if !force {
                let u = uses(of: m.address)
                if !u.isEmpty {
                    throw .invalid(.step(.bind), "\(m.address) in IOMMU group \(gid) is in use: " + u.map(\.detail).joined(separator: "; "),
                                   object: m.address.description, remedies: stopUsing(u, retry: .bindGroup(a)))
                }
            }
            targets.append(d)
        }
        var done: [(before: PCIDevice, record: BindingRecord?, outcome: BindingOutcome)] = []
        for d in targets {
            do throws(VFIOError) {
                let previous = try dir.load(d.address)
                done.append((d, previous, try bindDeviceLocked(d.address, to: driver, force: true, dir: dir)))
            } catch {
                var e = error
                var back: [String] = []
                var stuck: [String] = []
                // The remedies of members whose rollback did not fully take (their record is kept):
                // after the failed member's own, so following them in order puts all back.
                var fixes: [Remedy] = []
                for (prev, record, _) in done.reversed() {
                    let r = rollBack(prev.address, to: prev, record: record, in: dir, after: .invalid(.step(.putBack), ""))
                    let what = String((r.detail ?? "").drop { $0 == ";" || $0 == " " })
                    if r.detail?.contains("could not be put back") == true {
                        stuck.append("\(prev.address) (\(what); its record is kept, so restoring its driver retries)")
                    } else {
                        back.append(prev.address.description + (r.remedies.isEmpty ? "" : " (\(what))"))
                    }
                    // Its steps (the retry); the advice that comes with them, its text says already.
                    fixes += r.remedies.filter { $0.kind != .advice }
                }
                var text = e.detail ?? ""
                if !back.isEmpty { text += "; put back as they were (checked): " + back.joined(separator: ", ") }
                if !stuck.isEmpty { text += "; NOT put back: " + stuck.joined(separator: "; ") }
                e.detail = text
                for f in fixes where !e.remedies.contains(f) { e.remedies.append(f) }
                throw e
            }
        }
        var outcomes = done.map(\.outcome)
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
    /// stays, so a later `restore` still works). With `restore`: puts back the
    /// original driver and `driver_override` from the record bind wrote, and
    /// checks the result (see `putBack(_:driver:override:)`: a device that had
    /// no driver gets none); the record is removed only when that took. Without
    /// a record the kernel picks the driver (`drivers_probe`). Refuses when a
    /// process still has the device's VFIO node open (vfio-pci's remove would
    /// block until it closes), unless `force`.
    ///
    /// A failed restore says its fix: its own remedies (when it has any), then
    /// the retry (``Remedy/restoreDriver(_:)``), which finds the record kept.
    public func unbind(_ a: PCIAddress, restore: Bool = false, force: Bool = false) throws(VFIOError) -> BindingOutcome {
        do throws(VFIOError) {
            return try withBindingLock { (dir) throws(VFIOError) in try unbindLocked(a, restore: restore, force: force, dir: dir) }
        } catch {
            throw restore ? withRestoreRetry(error, a) : error
        }
    }

    /// `error` from `unbind --restore`, its remedies ending with the retry
    /// (unless they hold it already, or the device is not there to restore).
    func withRestoreRetry(_ error: VFIOError, _ a: PCIAddress) -> VFIOError {
        let retry = Remedy.restoreDriver(a)
        if error.remedies.contains(retry) || (error.operation == .step(.findPCIDevice) && error.errno == nil) { return error }
        var e = error
        e.remedies.append(retry)
        return e
    }

    func unbindLocked(_ a: PCIAddress, restore: Bool, force: Bool, dir: BindingStateDirectory) throws(VFIOError) -> BindingOutcome {
        let dev = try device(a)
        let record = try dir.load(a)
        if !force, dev.isBoundToVFIO {
            let holders = vfioOpeners(of: dev)
            if !holders.isEmpty {
                let retry: Remedy = restore ? .restoreDriver(a) : .unbindDriver(a)
                throw .invalid(.step(.unbind), "\(a) is open through VFIO by " + holders.joined(separator: ", ")
                               + "; vfio-pci would wait for it to close", object: a.description,
                               remedies: [.stopProcesses(holders.compactMap(Remedy.RunningProcess.init(listed:))), retry,
                                          .forced(retry)])
            }
        }
        if !force, !dev.isBoundToVFIO, dev.driver != nil {
            let u = uses(of: a)
            if !u.isEmpty {
                throw .invalid(.step(.unbind), "\(a) is in use through \(dev.driver!): " + u.map(\.detail).joined(separator: "; "),
                               object: a.description,
                               remedies: stopUsing(u, retry: restore ? .restoreDriver(a) : .unbindDriver(a)))
            }
        }
        var notes: [BindingNote] = []
        if !restore {
            try detachDriver(a)
            let override = dev.driverOverride != nil ? record?.originalDriverOverride : nil
            if dev.driverOverride != nil {
                try setOverride(a, override)
            }
            if record != nil {
                notes.append(BindingNote("the original driver (\(record?.originalDriver ?? "none")) is remembered; to bring it back",
                                         remedy: .restoreDriver(a)))
            }
            let after = reread(a, known: "\(a) was unbound", notes: &notes)
            return BindingOutcome(address: a, previousDriver: dev.driver, driver: after?.driver,
                                  driverOverride: after.map(\.driverOverride) ?? override,
                                  vfioCdev: after?.vfioCdev, changed: dev.driver != nil, notes: notes)
        }
        if let record {
            if let d = record.originalDriver, !(try driverIsRegistered(d)) {
                throw .invalid(.step(.restoreDriver), "the record's original_driver \"\(d)\" is not a registered PCI driver "
                               + "(/sys/bus/pci/drivers/\(d) does not exist); the record \(dir.name)/\(a).json is kept",
                               object: a.description, remedies: [.loadModule(d), .restoreDriver(a)])
            }
            do throws(VFIOError) {
                try putBack(a, driver: record.originalDriver, override: record.originalDriverOverride)
            } catch {
                var e = error
                // A failed syscall keeps its name (readlink, write): the errno is its answer.
                if case .step = e.operation {
                    e.operation = .step(.restoreDriver)
                    e.detail = (e.detail.map { $0 + "; " } ?? "") + "the record \(dir.name)/\(a).json is kept"
                } else {
                    e.detail = "\(VFIOError.Step.restoreDriver) of \(a) to \(record.originalDriver ?? "no driver"): "
                        + (e.detail.map { $0 + "; " } ?? "") + "the record \(dir.name)/\(a).json is kept"
                }
                throw e
            }
            // Put back and checked. Removing the record is the last step that may fail: a restore
            // that throws has kept its record (a retry then finds the device back and removes it:
            // ``unbind(_:restore:force:)`` adds that retry to the error's remedies).
            let back = "\(a) is back on \(record.originalDriver ?? "no driver") (checked)"
            do throws(VFIOError) {
                try dir.remove(a)
            } catch {
                var e = error
                e.detail = (e.detail.map { $0 + "; " } ?? "") + "\(back), but its record \(dir.name)/\(a).json could not be removed"
                throw e
            }
            if record.originalDriver == nil { notes.append("\(a) had no driver before it was bound; it has none now") }
            let after = reread(a, known: back, notes: &notes)
            let driverNow = after.map(\.driver) ?? record.originalDriver
            return BindingOutcome(address: a, previousDriver: dev.driver, driver: driverNow,
                                  driverOverride: after.map(\.driverOverride) ?? record.originalDriverOverride,
                                  vfioCdev: after?.vfioCdev, changed: dev.driver != driverNow, notes: notes)
        }
        try detachDriver(a)
        try setOverride(a, nil)
        try probe(a)
        let now: String?
        do throws(VFIOError) {
            now = try waitForDriver(a, nil, timeout: .milliseconds(200))
            notes.append("no record of an original driver: the kernel chose \(now ?? "no driver")")
        } catch {
            now = nil
            notes.append(BindingNote("no record of an original driver: drivers_probe was asked to choose one, "
                                     + "but which it chose could not be read: \(error.summary)"))
        }
        let after = reread(a, known: "drivers_probe ran", notes: &notes)
        let driverNow = after.map(\.driver) ?? now
        return BindingOutcome(address: a, previousDriver: dev.driver, driver: driverNow, driverOverride: after?.driverOverride,
                              vfioCdev: after?.vfioCdev, changed: dev.driver != driverNow, notes: notes)
    }

    /// Processes holding the device's VFIO cdev or group node open (`pid N (comm)`).
    public func vfioOpeners(of dev: PCIDevice, openNodes: [String: [String]]? = nil) -> [String] {
        var nodes: [String] = []
        if let c = dev.vfioCdevPath { nodes.append(c) }
        if let g = dev.vfioGroupPath { nodes.append(g) }
        guard !nodes.isEmpty else { return [] }
        let table = openNodes ?? openDeviceNodes()
        var out: [String] = []
        for n in nodes { for who in table[n] ?? [] where !out.contains(who) { out.append(who) } }
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
        try c.encode(notes.map { $0.worded(encoder.remedyWording) }, forKey: .notes)
        try c.encode(notes.map(\.remedy), forKey: .noteRemedies)
    }
}
