import Foundation
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

@testable import NVMeDriver

/// Fault injection (the kernel's fail-nth, ``FailNth/sweep(limit:name:setUp:scenario:afterEach:tearDown:)``)
/// through the driver's controller bring-up and teardown: every kernel
/// allocation of the test's thread fails in turn while the driver maps BAR0,
/// reads CAP, disables the controller, maps the admin queue, enables it,
/// waits for ready, identifies the controller and its namespaces, creates an
/// I/O queue pair, and then deletes it, shuts the controller down and unmaps
/// its DMA memory and BAR0.
///
/// Each run opens and attaches the VFIO device before the injection window
/// and closes it after (``NVMeController/init(device:options:)`` brings the
/// controller up on the open device): vfio-pci's open and close enable and
/// disable the PCI function (pci_enable_device/pci_disable_device), which
/// evaluates the ACPI _PRT, and on Linux 7.2.13 an injected allocation failure
/// there corrupts ACPICA's object reference counts and oopses the kernel at a
/// later close (a kernel bug, not VFIOKit's: README, "Fault injection"). A
/// fresh device per run also gives each run a fresh IOMMU domain: on
/// virtio-iommu an injected failure in the IOMMU driver's own unmap leaves a
/// stale mapping in the domain (kernel-findings.txt, pages.c:238), which a
/// later run's mapping at the same IOVA would meet.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("NVMeFailNthTests"))
struct NVMeFailNthTests {
    /// Injections at most per sweep: keeps one boot within a few minutes
    /// (each run opens and resets the controller in TCG).
    static let limit = 400

    /// The device of one run, opened outside the injection window, with the
    /// test's own view of BAR0 and config space for the checks.
    struct Fixture {
        let device: AttachedDevice
        let probe: Registers
        let config: PCIConfigSpace
    }

    /// Bring-up, Identify and shutdown, polled (MSI-X setup has its own sweep,
    /// VFIOKitGuestTests.FailNthTests/nvmeMSIXSetup). Each injection either
    /// throws an NVMeError naming the controller and what failed, or is
    /// absorbed by the kernel (then the controller must have come up and
    /// identified itself); never crashes or hangs. After each, before the
    /// device is closed: it is still open on vfio-pci, the controller answers
    /// (CAP), is disabled (CC.EN = 0, CSTS.RDY = 0) with bus mastering off;
    /// after the close the fd count, VmPin and VmLck are as before. Afterwards
    /// a clean bring-up reads the known pattern and the kernel's nvme driver
    /// takes the controller back and reads it too.
    @Test func controllerBringUpAndShutdown() throws {
        let bdf = try NVMeGuest.bdf()
        let address = try PCIAddress(parsing: bdf)
        try Tool.bind(bdf)
        var restored = false
        defer { if !restored { try? Tool.restore(bdf) } }
        let options = NVMeController.Options(interrupts: false, ioQueueCount: 1)
        let fdsAtStart = Guest.openFDCount()

        do {
            let errors = Mutex<[NVMeError]>([])
            let start = ContinuousClock.now
            let runs = try FailNth.sweep(limit: Self.limit, setUp: { () throws(VFIOError) -> Fixture in
                let device = try AttachedDevice.open(address)
                return Fixture(device: device, probe: Registers(region: try device.bar(0)), config: try device.configSpace())
            }, scenario: { (f: Fixture) throws(NVMeError) in
                do throws(NVMeError) {
                    let c = try NVMeController(device: f.device, options: options)
                    // Identify Controller succeeded in the bring-up: its data must be the controller's.
                    let serial = c.identity.serialNumber
                    try c.close()
                    if serial != "vfiokit0" {
                        throw NVMeError(.controllerFailed, "Identify Controller returned serial \(serial.debugDescription)", device: bdf)
                    }
                } catch {
                    errors.withLock { $0.append(error) }
                    throw error
                }
            }, afterEach: { (f: Fixture) -> [String] in
                var problems: [String] = []
                let d = Guest.driver(of: bdf)
                if d != "vfio-pci" { problems.append("\(bdf) is on \(d ?? "no driver"), not vfio-pci") }
                if f.device.isClosed {  // (its BARs are unmapped: no register to read)
                    return problems + ["the AttachedDevice was closed (it belongs to the test)"]
                }
                if f.probe.load64(Register.cap) == .max { problems.append("CAP reads all ones: the controller stopped responding") }
                let cc = ControllerConfiguration(raw: f.probe.load32(Register.cc))
                let csts = ControllerStatus(raw: f.probe.load32(Register.csts))
                if cc.enabled || csts.ready {
                    problems.append("the controller was left enabled (CC 0x\(String(cc.raw, radix: 16)), CSTS 0x\(String(csts.raw, radix: 16)))")
                }
                do {
                    if try f.config.command().contains(.busMaster) { problems.append("bus mastering was left on") }
                } catch {
                    problems.append("the config space cannot be read: \(error)")
                }
                return problems
            }, tearDown: { (f: Fixture) throws(VFIOError) in
                try f.probe.region.unmap()
                try f.device.close()
            })
            let elapsed = ContinuousClock.now - start

            let injected = runs.filter(\.injected)
            #expect(runs.first?.error == nil, "the clean run must succeed: \(runs.first?.description ?? "no run")")
            #expect(injected.count >= 40, "only \(injected.count) injection points reached")  // 54 on Intel and AMD, 180-187 on virtio
            let finished = runs.last.map { !$0.injected } ?? false
            #expect(finished || injected.count == Self.limit, "the sweep stopped early: \(runs.last?.description ?? "no run")")
            let leaks = runs.filter { !$0.clean }
            for run in leaks { Issue.record("leak or change after a run: \(run)") }
            // Every thrown error names the controller and says what failed.
            let thrown = errors.withLock { $0 }
            for e in thrown where e.device != bdf || e.message.isEmpty {
                Issue.record("an error without the controller or a message: \(e)")
            }
            let threw = injected.filter { $0.error != nil }.count
            #expect(thrown.count == threw, "\(thrown.count) NVMeErrors caught for \(threw) failed runs")
            print("fail-nth: \(injected.count) injections\(finished ? "" : " (limit \(Self.limit) reached)"), \(threw) surfaced as errors, "
                  + "\(injected.count - threw) absorbed by the kernel, \(leaks.count) leaks, in \(elapsed)")
            // What failed, by step and cause (the message up to its first sentence).
            var causes: [String: [Int]] = [:]
            for run in injected + (finished ? runs.suffix(1) : []) {
                guard let e = run.error else { continue }
                let line = e.prefix(while: { $0 != "\n" })
                causes[String(line.range(of: ". ").map { line[..<$0.lowerBound] } ?? line), default: []].append(run.nth)
            }
            for (cause, nths) in causes.sorted(by: { $0.value.count > $1.value.count }) {
                print("fail-nth:   \(nths.count) x \(cause) (nth \(nths.prefix(12).map(String.init).joined(separator: ",")))")
            }

            // The sweep's last run (no allocation left to fail) brought the controller up.
            #expect(!finished || runs.last?.error == nil, "the run after the last injection failed: \(runs.last?.description ?? "no run")")
        }
        #expect(Guest.openFDCount() == fdsAtStart)
        #expect(Guest.driver(of: bdf) == "vfio-pci")

        // Clean bring-ups, twice on one open device (closing a controller
        // leaves the device open and usable): Identify, and the known pattern read back.
        do {
            let device = try AttachedDevice.open(address)
            for _ in 0..<2 {
                let c = try NVMeController(device: device, options: options)
                #expect(c.identity.serialNumber == "vfiokit0" && c.identity.modelNumber.contains("QEMU"))
                let again = try c.identifyController()
                #expect(again.serialNumber == "vfiokit0")
                let buffer = try c.makeBuffer(bytes: 4096)
                try c.queue(0).read(lba: NVMeGuest.patternLBA, blocks: 8, into: buffer)
                #expect(difference(buffer.read(count: 4096), try NVMeGuest.pattern(lba: NVMeGuest.patternLBA, blocks: 8)) == nil)
                try c.close()
                #expect(!device.isClosed)
            }
            try device.close()
        }
        #expect(Guest.openFDCount() == fdsAtStart)
        try Tool.restore(bdf)
        restored = true
        try NVMeGuest.waitForKernelDriver(bdf)
        #expect(Guest.driver(of: bdf) == "nvme")
        // The kernel's driver reads the same pattern.
        #expect(difference(try NVMeGuest.kernelRead(lba: NVMeGuest.patternLBA, blocks: 8),
                           try NVMeGuest.pattern(lba: NVMeGuest.patternLBA, blocks: 8)) == nil)
    }
}
