import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The rig's own checks, each shown failing on a deliberate fault: a check
/// that cannot fail is not a check. Cheap; runs on every IOMMU.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("RigSelfTests"))
struct RigSelfTests {
    /// The fd leak check rejects more fds than before (a leak) and fewer (an
    /// fd closed that the test did not own: a double close).
    @Test func fdCountCheckRejectsMoreAndFewerFds() throws {
        let spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        try #require(spare >= 0)
        let before = Guest.openFDCount()
        #expect(MockIOMMU.fdCountSettles(at: before))
        close(spare)  // one fewer than at the start, as after closing someone else's fd
        #expect(!MockIOMMU.fdCountSettles(at: before, seconds: 0.2), "one fd fewer must fail the check")
        let a = open("/dev/null", O_RDONLY | O_CLOEXEC), b = open("/dev/null", O_RDONLY | O_CLOEXEC)
        #expect(!MockIOMMU.fdCountSettles(at: before, seconds: 0.2), "one fd more must fail the check")
        close(b)
        #expect(MockIOMMU.fdCountSettles(at: before))
        close(a)
    }

    /// A fail-nth run that leaves a mapping behind is not clean, on both
    /// kernel paths, each by the counter that path charges: VFIO type1 pins
    /// are charged to VmLck (`mm->locked_vm`), iommufd pins to VmPin
    /// (`mm->pinned_vm`). Before VmLck was counted, the type1 leak passed.
    @Test func aSweepCatchesAMappingLeftBehindOnTheType1Path() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let buffer = try DMABuffer(length: 16384)
        let address = UnsafeRawPointer(buffer.baseAddress)
        let container = try VFIOContainer(backend: .legacy)
        let group = try VFIOGroup(of: try PCIAddress(parsing: bdf))
        try group.setContainer(container)
        try container.setIOMMU(.type1v2)
        // The deliberate fault: map, and skip the unmap.
        let runs = try FailNth.sweep(limit: 0) { () throws(VFIOError) in
            try container.unsafeMapDMA(address: address, length: buffer.length, at: 0x300000)
        }
        let run = try #require(runs.first)
        #expect(runs.count == 1 && run.error == nil, "\(runs)")
        #expect(!run.clean, "a mapping left behind must make the run unclean: \(run)")
        #expect(run.lockedAfter - run.lockedBefore == 16, "type1 charges 16 KiB to VmLck: \(run)")
        #expect(run.pinnedAfter == run.pinnedBefore, "type1 does not charge VmPin: \(run)")
        #expect(try container.unmapDMA(iova: 0x300000, length: UInt64(buffer.length)) == UInt64(buffer.length))
        try group.unsetContainer()
        try group.close()
        try container.close()
    }

    @Test func aSweepCatchesAMappingLeftBehindOnTheIOMMUFDPath() throws {
        try MockIOMMU.requireAvailable()
        let buffer = try DMABuffer(length: 16384)
        let address = UnsafeRawPointer(buffer.baseAddress)
        let ctx = try IOMMUFD()
        let ioas = try IOAS(ctx)
        // Pages are pinned once a domain holds them: a mock device gives the IOAS one.
        let device = try MockDevice(attachedTo: ioas)
        let runs = try FailNth.sweep(limit: 0) { () throws(VFIOError) in
            _ = try ioas.unsafeMap(address: address, length: buffer.length, at: IOVA(MockIOMMU.apertureStart))
        }
        let run = try #require(runs.first)
        #expect(runs.count == 1 && run.error == nil, "\(runs)")
        #expect(!run.clean, "a mapping left behind must make the run unclean: \(run)")
        #expect(run.pinnedAfter - run.pinnedBefore == 16, "iommufd charges 16 KiB to VmPin: \(run)")
        #expect(try ioas.unmapAll() == UInt64(buffer.length))
        try device.destroy()
        try ioas.destroy()
        try ctx.close()
    }

    /// What `afterEach` reports makes a run unclean (the driver binding checks
    /// of the sweeps go through it).
    @Test func aSweepReportsWhatItsCheckFound() throws {
        let runs = try FailNth.sweep(limit: 0, scenario: { () throws(VFIOError) in }, afterEach: { ["binding changed"] })
        #expect(runs.count == 1 && !runs[0].clean && runs[0].description.contains("CHANGED: binding changed"), "\(runs)")
    }
}
