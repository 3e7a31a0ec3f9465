import Foundation
import Testing
import VFIOCommands
import VFIOKit
import VFIOKitTestSupport

/// Reliability under kernel allocation failure: each scenario runs once
/// cleanly, then again with the 1st, 2nd, 3rd ... kernel allocation of the
/// thread failing (the kernel's fail-nth), until it no longer reaches the
/// injection point. Every run must either succeed or throw a VFIOError, and
/// leave no fd, no pinned or locked page and no changed driver binding behind.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("FailNthTests"))
struct FailNthTests {
    /// Checks the sweep's outcome and records what it did.
    func check(_ runs: [FailNth.Run], minimumInjections: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        let injected = runs.filter(\.injected)
        #expect(runs.first?.error == nil, "the clean run must succeed: \(runs.first?.description ?? "no run")",
                sourceLocation: sourceLocation)
        #expect(injected.count >= minimumInjections, "only \(injected.count) injection points reached",
                sourceLocation: sourceLocation)
        #expect(runs.last.map { !$0.injected } ?? false, "the sweep did not finish", sourceLocation: sourceLocation)
        let leaks = runs.filter { !$0.clean }
        for run in leaks {
            Issue.record("leak or change after a run: \(run)", sourceLocation: sourceLocation)
        }
        let threw = injected.filter { $0.error != nil }.count
        print("fail-nth: \(injected.count) injections, \(threw) surfaced as errors, "
              + "\(injected.count - threw) absorbed by the kernel, \(leaks.count) leaks")
    }

    /// The iommufd path without a device: context, IOAS, map, ranges, unmap.
    @Test func iommufdMapUnmap() throws {
        let buffer = try DMABuffer(length: 64 * 1024)
        buffer.fill(1)
        let runs = try FailNth.sweep { () throws(VFIOError) in
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            _ = try ioas.iovaRanges()
            let mapping = try ioas.map(buffer, at: 0x100000)
            _ = try ioas.unsafeMap(address: buffer.withUnsafeMutableBytes { UnsafeRawPointer($0.baseAddress!) },
                                   length: 4096, at: nil)
            try mapping.unmap()
            _ = try ioas.unmapAll()
            try ioas.destroy()
            try ctx.fd.close()
        }
        check(runs, minimumInjections: 5)
    }

    // vfio-pci's first open and last close (VFIO_DEVICE_BIND_IOMMUFD, and the
    // device fd's release) enable and disable the PCI device, which evaluates
    // the ACPI _PRT. Failing an allocation inside that evaluation corrupts
    // ACPICA's state in the 7.2 guest kernel: a general protection fault in
    // acpi_ut_update_object_reference at the next pci_disable_device. That is
    // a kernel bug outside VFIO, so these sweeps keep the device's first
    // open/last close outside the injected region and sweep everything after.

    /// The edu device through the cdev path: with the device bound, sweep IOAS
    /// allocation, attach, map, DMA, MSI on and off, detach, destroy.
    @Test func cdevDeviceDMA() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let buffer = try DMABuffer(length: 8192)
        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        buffer.write(pattern)
        let ctx = try IOMMUFD()
        let device = try VFIODevice.open(try PCIAddress(parsing: bdf))
        try device.bind(to: ctx)
        let edu = try EduDevice(device)
        try edu.enableBusMaster()
        let runs = try FailNth.sweep(scenario: { () throws(VFIOError) in
            let ioas = try IOAS(ctx)
            try device.attach(to: ioas)
            // The device outlives this run: whatever fails, it lets go of the
            // IOAS (which then unpins everything still mapped in it).
            defer { try? device.detach() }
            let mapping = try ioas.map(buffer, at: 0x200000)
            try edu.dmaToDevice(from: 0x200000, count: pattern.count)
            try edu.dmaFromDevice(to: 0x201000, count: pattern.count)
            let msi = try device.interrupt(.msi)
            try msi.close()
            try mapping.unmap()
        }, afterEach: { Self.stillOnVFIO(bdf) })
        check(runs, minimumInjections: 5)
        // The device still works after every failure: one more round trip.
        let ioas = try IOAS(ctx)
        try device.attach(to: ioas)
        buffer.fill(0)
        buffer.write(pattern)
        let mapping = try ioas.map(buffer, at: 0x200000)
        try edu.dmaToDevice(from: 0x200000, count: pattern.count)
        try edu.dmaFromDevice(to: 0x201000, count: pattern.count)
        #expect(buffer.read(at: 4096, count: pattern.count) == pattern)
        try mapping.unmap()
        try device.close()
        #expect(Guest.driver(of: bdf) == "vfio-pci")
    }

    /// The group path (type1v2 container): with the group set up and one
    /// device fd held, sweep opening another device fd, mapping and unmapping.
    @Test func groupPathType1v2() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let buffer = try DMABuffer(length: 16384)
        let container = try VFIOContainer()
        let group = try VFIOGroup(of: try PCIAddress(parsing: bdf))
        try group.setContainer(container)
        try container.setIOMMU(.type1v2)
        let held = try group.device(try PCIAddress(parsing: bdf))
        let runs = try FailNth.sweep(scenario: { () throws(VFIOError) in
            let device = try group.device(try PCIAddress(parsing: bdf))
            _ = try container.info()
            let mapping = try container.mapDMA(buffer, at: 0x300000)
            try mapping.unmap()
            try device.close()
        }, afterEach: { Self.stillOnVFIO(bdf) })
        check(runs, minimumInjections: 3)
        try held.close()
        try group.unsetContainer()
        try group.close()
        try container.close()
        #expect(Guest.driver(of: bdf) == "vfio-pci")
    }

    // MARK: mock-IOMMU sweeps (CONFIG_IOMMUFD_TEST; independent of the emulated IOMMU)

    /// Sweeps `scenario` in one iommufd kept across the runs (so that the
    /// objects a run leaves behind are seen): after each run, with injection
    /// off, no object may be left in it (``MockIOMMU/leftoverObjects(_:upTo:)``,
    /// as `withMockContext` checks), besides the fds and pinned pages that
    /// ``FailNth/sweep(limit:name:scenario:afterEach:)`` compares. Afterwards the
    /// scenario must still succeed in the same iommufd.
    func mockSweep(name: String = #function, minimumInjections: Int,
                   _ scenario: (IOMMUFD) throws(VFIOError) -> Void,
                   sourceLocation: SourceLocation = #_sourceLocation) throws {
        try MockIOMMU.requireAvailable()
        let ctx = try IOMMUFD()
        let runs = try FailNth.sweep(name: name, scenario: { () throws(VFIOError) in try scenario(ctx) }, afterEach: {
            let left = MockIOMMU.leftoverObjects(ctx)
            return left.isEmpty ? [] : ["iommufd objects left: \(left)"]
        })
        check(runs, minimumInjections: minimumInjections, sourceLocation: sourceLocation)
        try scenario(ctx)
        #expect(MockIOMMU.leftoverObjects(ctx) == [], "objects left after the last clean run", sourceLocation: sourceLocation)
        try ctx.close()
    }

    /// A run that must have seen something (a fault, an event): throws when it did not.
    static func expectDelivered(_ ok: Bool, _ what: String) throws(VFIOError) {
        guard ok else { throw VFIOError.invalid(.step("fail-nth scenario"), "\(what) was not delivered") }
    }

    /// HWPT allocation: a mapped IOAS, a mock device, a nest parent HWPT and a
    /// nested (selftest) HWPT on it, the device moved onto the nested one and
    /// back, everything destroyed.
    @Test func hwptAllocNested() throws {
        let buffer = try DMABuffer(length: 16384)
        try mockSweep(minimumInjections: 5) { ctx throws(VFIOError) in
            let ioas = try IOAS(ctx)
            let mapping = try ioas.map(buffer, at: IOVA(mockBase))
            let dev = try MockDevice(attachedTo: ioas)
            defer { try? dev.destroy() }
            let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
            let nested = try HWPT(nestedOn: parent, device: dev.deviceID, data: IOMMUFDMockTests.HardwarePageTables.selftestData())
            try dev.replace(with: nested)
            try dev.replace(with: ioas)
            try nested.destroy()
            try parent.destroy()
            try dev.destroy()
            try mapping.unmap()
            try ioas.destroy()
        }
    }

    /// The fault queue: a FaultQueue, a nested HWPT that reports to it, one
    /// page fault raised by the mock device, read and answered, torn down.
    @Test func faultQueue() throws {
        try mockSweep(minimumInjections: 5) { ctx throws(VFIOError) in
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            defer { try? dev.destroy() }
            let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
            let queue = try FaultQueue(ctx)
            let iopf = try HWPT(nestedOn: parent, device: dev.deviceID, data: IOMMUFDMockTests.HardwarePageTables.selftestData(),
                                faultQueue: queue)
            try dev.replace(with: iopf)
            try MockIOMMU.triggerPageFault(ctx, device: dev.deviceID, pasid: 1, group: 2, permissions: [.read, .write],
                                           address: 0xdead_b000)
            try Self.expectDelivered(try queue.wait(timeout: .seconds(1)), "the page fault")
            for f in try queue.read() { try queue.respond(cookie: f.cookie, success: true) }
            try dev.replace(with: ioas)
            try iopf.destroy()
            try queue.destroy()
            try parent.destroy()
            try dev.destroy()
            try ioas.destroy()
        }
    }

    /// vIOMMU, vDEVICE and vEVENTQ: a vIOMMU on a nest parent, its event
    /// queue, the device's vDEVICE, a nested HWPT of the vIOMMU with the device
    /// on it, one vIOMMU event raised and read, torn down.
    @Test func viommuVDeviceVEventQueue() throws {
        try mockSweep(minimumInjections: 5) { ctx throws(VFIOError) in
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            defer { try? dev.destroy() }
            let stack = try MockVEventStack(ioas, dev, depth: 2, virtualID: 0x99)
            try MockIOMMU.triggerVEvent(ctx, device: dev.deviceID)
            try Self.expectDelivered(try stack.queue.wait(timeout: .seconds(1)), "the vIOMMU event")
            _ = try stack.queue.read()
            try stack.tearDown()
            try dev.destroy()
            try ioas.destroy()
        }
    }

    /// IOAS copy: a mapping of one IOAS copied into another (as a DMAMapping
    /// and as a raw range), each IOAS with a mock domain, all unmapped and destroyed.
    @Test func ioasCopy() throws {
        let buffer = try DMABuffer(length: 8192)
        try mockSweep(minimumInjections: 5) { ctx throws(VFIOError) in
            let src = try IOAS(ctx), dst = try IOAS(ctx)
            let srcDev = try MockDevice(attachedTo: src)
            defer { try? srcDev.destroy() }
            let dstDev = try MockDevice(attachedTo: dst)
            defer { try? dstDev.destroy() }
            let mapping = try src.map(buffer, at: IOVA(mockBase))
            let copied = try dst.copy(mapping, to: IOVA(mockBase + 0x20000))
            let raw = try dst.copy(from: src, sourceIOVA: IOVA(mockBase), length: 8192, to: nil)
            let unmapped = try dst.unmap(iova: raw, length: 8192)
            if unmapped != 8192 {
                throw VFIOError.invalid(.ioctl(.iommuIOASUnmap), "unmapped \(unmapped) of 8192 bytes", object: dst.label)
            }
            try copied.unmap()
            try mapping.unmap()
            try dstDev.destroy()
            try srcDev.destroy()
            try dst.destroy()
            try src.destroy()
        }
    }

    /// Map-file: a memfd mapped with IOMMU_IOAS_MAP_FILE at a fixed and a
    /// kernel-chosen IOVA (read-only) into an IOAS with a mock domain, unmapped, destroyed.
    @Test func ioasMapFile() throws {
        let buffer = try DMABuffer(length: 16384, backing: .memfd)
        buffer.fill(0x5a)
        try mockSweep(minimumInjections: 5) { ctx throws(VFIOError) in
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            defer { try? dev.destroy() }
            let fixed = try ioas.mapFile(buffer, at: IOVA(mockBase))
            let chosen = try ioas.mapFile(buffer, at: nil, writable: false)
            try chosen.unmap()
            try fixed.unmap()
            try dev.destroy()
            try ioas.destroy()
        }
    }

    // MARK: interrupts and region mmap on the edu

    /// The edu bound to vfio-pci, opened through its cdev, bound to an iommufd
    /// and attached to an IOAS: `body` sweeps with it; afterwards the device
    /// must still be on vfio-pci and answer (liveness, an MSI).
    func withEdu(_ body: (VFIODevice, EduDevice) throws -> Void) throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let ctx = try IOMMUFD()
        let device = try VFIODevice.open(try PCIAddress(parsing: bdf))
        try device.bind(to: ctx)
        let ioas = try IOAS(ctx)
        try device.attach(to: ioas)
        let edu = try EduDevice(device)
        try edu.enableBusMaster()  // MSI is a memory write: the edu sends none without it
        try body(device, edu)
        #expect(Guest.driver(of: bdf) == "vfio-pci")
        // Usable afterwards: registers answer and an MSI arrives.
        #expect(edu.liveness(0x1234_5678) == ~UInt32(0x1234_5678))
        let msi = try edu.enableMSI()
        edu.raise(1)
        #expect(try msi.wait(timeout: .seconds(5)) != nil, "no MSI after the sweep")
        edu.acknowledge(1)
        try msi.close()
        // BAR0's mmap holds the device file: unmapped first, so that closing the
        // device detaches it and the iommufd can close.
        try edu.bar0.unmap()
        try device.close()
        try ctx.close()
    }

    /// IRQ setup: MSI routed to an eventfd, raised by the edu and received,
    /// turned off; INTx routed and turned off. (The edu has no MSI-X.)
    @Test func eduInterruptSetup() throws {
        let bdf = try Guest.requireEdu()
        try withEdu { device, edu in
            let runs = try FailNth.sweep(scenario: { () throws(VFIOError) in
                let msi = try device.interrupt(.msi)
                edu.raise(1)
                let got = try msi.wait(timeout: .seconds(2))
                edu.acknowledge(1)
                try msi.close()
                try Self.expectDelivered(got != nil, "the MSI")
                let intx = try device.interrupt(.intx)
                try intx.close()
            }, afterEach: { Self.stillOnVFIO(bdf) })
            check(runs, minimumInjections: 3)
        }
    }

    /// MSI-X setup, which the edu lacks, on the nvme (bound to vfio-pci by the
    /// library, given back to its driver afterwards): 8 vectors routed to
    /// eventfds, one fired from software and received on that vector, all off.
    @Test func nvmeMSIXSetup() throws {
        let bdf = try Guest.require("VFIOKIT_NVME")
        let address = try PCIAddress(parsing: bdf)
        _ = try PCIHost.system.bind(address)
        defer { #expect(throws: Never.self, "put the device back") { _ = try PCIHost.system.unbind(address, restore: true) } }
        let ctx = try IOMMUFD()
        let device = try VFIODevice.open(cdev: try VFIODevice.cdevPath(of: address))
        try device.bind(to: ctx)
        try #require(try device.irqInfo(.msix).count >= 8)
        let sweep = { () throws(VFIOError) in
            let vectors = try device.interrupts(.msix, count: 8)
            try vectors[3].trigger()
            let got = try vectors[3].wait(timeout: .seconds(2))
            try vectors.close()
            try Self.expectDelivered(got == 1, "the MSI-X trigger of vector 3")
        }
        let runs = try FailNth.sweep(scenario: sweep, afterEach: { Self.stillOnVFIO(bdf) })
        check(runs, minimumInjections: 3)
        try sweep()  // the vectors still work
        try device.close()
        try ctx.close()
    }

    /// Region mmap: BAR0's region info read, the BAR mapped, its
    /// identification register read, unmapped.
    @Test func eduRegionMmap() throws {
        let bdf = try Guest.requireEdu()
        try withEdu { device, _ in
            let runs = try FailNth.sweep(scenario: { () throws(VFIOError) in
                let bar = try device.map(region: try device.regionInfo(PCIRegion.bar(0)))
                let id = bar.load32(at: 0)
                try bar.unmap()
                if id != EduDevice.identification {
                    throw VFIOError.invalid(.step("edu"), "BAR0 identification reads 0x\(String(id, radix: 16))")
                }
            }, afterEach: { Self.stillOnVFIO(bdf) })
            check(runs, minimumInjections: 1)
        }
    }

    /// The commands in a hint: every `...` span, in order.
    static func printedCommandsIn(_ text: String) -> [String] {
        text.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
    }

    /// Runs one printed command as printed: `vfioctl ...` is the built vfioctl,
    /// anything else goes to /bin/sh. Returns what went wrong.
    static func follow(_ command: String) -> [String] {
        do {
            let r = command.hasPrefix("vfioctl ")
                ? try VFIOCtlBinary.run(command.split(separator: " ").dropFirst().map(String.init))
                : try VFIOCtlBinary.sh("/bin/sh", ["-c", command])
            return r.status == 0 ? [] : ["the printed `\(command)` failed (status \(r.status)): \(r.err)"]
        } catch {
            return ["the printed `\(command)` could not be run: \(error)"]
        }
    }

    /// The device sweeps keep the device bound to vfio-pci throughout.
    static func stillOnVFIO(_ bdf: String) -> [String] {
        let d = Guest.driver(of: bdf)
        return d == "vfio-pci" ? [] : ["\(bdf) is on \(d ?? "no driver"), not vfio-pci"]
    }

    /// A device's binding as the binder sees it: driver, driver_override, and
    /// whether a record of its original driver is on file.
    struct Binding: Equatable, CustomStringConvertible {
        var driver: String?, override: String?, recorded: Bool
        init(_ bdf: String, _ host: PCIHost, _ a: PCIAddress) {
            driver = Guest.driver(of: bdf)
            override = Guest.driverOverride(of: bdf)
            recorded = host.bindingRecord(a) != nil
        }
        var description: String { "driver \(driver ?? "none"), override \(override ?? "none"), record \(recorded ? "kept" : "none")" }
    }

    /// Driver binding through the library: bind the lone edu to vfio-pci and
    /// give it back (`unbind --restore`), with every kernel allocation of the
    /// calling thread failing in turn (sysfs reads and writes, vfio-pci's and
    /// pci-stub's probe and remove). pci-stub stands in for the kernel driver
    /// the device had, so the restore has a real driver to bring back; it has
    /// no id table and binds only through `driver_override`, so a restore that
    /// loses the override cannot bind it. After each run (injection off):
    /// - the run succeeded: the binding is what it was and no record is left;
    /// - bind threw: the binding is what it was (its rollback is checked), or
    ///   the error says it could not be put back and the record is kept;
    /// - unbind --restore threw: the record is kept (a retry has something to
    ///   restore from: a thrown restore must never have deleted it);
    /// and wherever the binding was left changed, the error prints the fix
    /// `vfioctl unbind BDF --restore`, and that command, run as printed (the
    /// built vfioctl), puts it back, record removed.
    ///
    /// The binder's sysfs writes pass through a `SysfsWriteHandler` to the real
    /// files: with a handler the binder does not poll for an asynchronous probe
    /// (10 s per failed probe). Writing drivers_probe probes synchronously
    /// (drivers/base/bus.c drivers_probe_store -> device_attach, allow_async
    /// false), so the driver link is final when the write returns.
    @Test func bindAndRestoreDriver() throws {
        let bdf = try Guest.requireEdu()
        let a = try PCIAddress(parsing: bdf)
        try Guest.bind(bdf, to: "pci-stub")
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        // The default state directory: the printed fixes run vfioctl, which keeps its records there.
        let host = PCIHost(root: "/", sysfsWriter: PassThroughSysfs())
        let fix = "vfioctl unbind \(bdf) --restore"
        let original = Binding(bdf, host, a)
        try #require(original.driver == "pci-stub" && original.override == "pci-stub" && !original.recorded, "\(original)")
        var step = ""
        var failure: VFIOError?
        var tally: [String: Int] = [:]
        let runs = try FailNth.sweep(scenario: { () throws(VFIOError) in
            failure = nil
            do throws(VFIOError) {
                step = "bind"
                _ = try host.bind(a)
                step = "unbind --restore"
                _ = try host.unbind(a, restore: true)
            } catch {
                failure = error
                throw error
            }
        }, afterEach: {
            var problems: [String] = []
            let now = Binding(bdf, host, a)
            let outcome: String
            if let failure {
                let text = failure.description
                if step == "bind" {
                    // A failed bind puts the device back (checked) and its record back to none;
                    // only when that did not take may it leave a change, with the record kept and said so.
                    let admitted = text.contains("could not be put back") || text.contains("record could not be restored")
                    if now != original && !(now.recorded && admitted) {
                        problems.append("bind threw, binding \(original) -> \(now)")
                    }
                    outcome = now == original ? "bind threw, put back" : "bind threw, record kept"
                } else {
                    // A failed restore keeps the record, whatever it managed before failing.
                    if !now.recorded {
                        problems.append("unbind --restore threw, yet the record is gone (binding \(original) -> \(now)): "
                                        + "a retry has nothing to restore from")
                    }
                    outcome = "restore threw, \(now.driver == original.driver && now.override == original.override ? "device back" : "device not back")"
                }
            } else {
                if now != original { problems.append("succeeded, but binding \(original) -> \(now)") }
                outcome = "succeeded"
            }
            tally[outcome, default: 0] += 1
            if now != original && now.recorded, let failure {
                // The record is kept: the fix the error prints, `vfioctl unbind BDF --restore`, run as
                // printed (the built vfioctl, in a process of its own), must finish the job.
                let commands = Self.printedCommandsIn(CLIWording.text(failure.remedies) ?? "")
                if !commands.contains(fix) {
                    problems.append("binding \(original) -> \(now), and the error prints no `\(fix)` to put it back")
                } else {
                    tally["printed fix followed", default: 0] += 1
                    for c in commands { problems += Self.follow(c) }
                    let after = Binding(bdf, host, a)
                    if after != original { problems.append("binding \(original) -> \(now), after the printed fix \(after)") }
                }
            }
            if !problems.isEmpty, let failure { problems.append("(the run threw in \(step): \(failure))") }
            // Each run starts from the original binding, whatever the last one left.
            if Binding(bdf, host, a) != original {
                unlink(host.stateDirectory + "/\(bdf).json")
                do { try Guest.bind(bdf, to: "pci-stub") } catch { problems.append("resetting the fixture failed: \(error)") }
            }
            return problems
        })
        check(runs, minimumInjections: 20)
        print("fail-nth bind/unbind: " + tally.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))
        #expect(Binding(bdf, host, a) == original)
    }
}

/// Sysfs writes straight to the files (see FailNthTests.bindAndRestoreDriver).
struct PassThroughSysfs: SysfsWriteHandler {
    func write(_ value: String, to path: String, host: PCIHost) throws(VFIOError) {
        var real = host
        real.sysfsWriter = nil
        try real.write(value, to: path)
    }
}
