import CIOMMUFDTest
import CVFIO
import Foundation
import Synchronization
import SystemPackage
import Testing
import VFIOKit
import VFIOObjects
import VFIOKitTestSupport

/// Every iommufd request, driven against the kernel's mock IOMMU
/// (CONFIG_IOMMUFD_TEST) in the test guest. Serialized so that the
/// /proc/self/fd leak check of each test sees only its own fds.
/// The mock domains do not depend on the emulated IOMMU (they need
/// CONFIG_IOMMUFD_TEST only): the suite runs in every guest.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("IOMMUFDMockTests"))
struct IOMMUFDMockTests {}

/// Runs `body` with a fresh iommufd, then checks that every object it made is
/// gone (no id in 1...64 still exists) and that the process has no more fds
/// than before (suites of other files may open and close fds meanwhile: the
/// count is given a moment to settle).
func withMockContext(_ body: (IOMMUFD) throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) throws {
    try MockIOMMU.requireAvailable()
    let before = Guest.openFDCount()
    let fdsBefore = Guest.openFDs()
    try {
        let ctx = try IOMMUFD()
        try body(ctx)
        #expect(MockIOMMU.leftoverObjects(ctx) == [], "objects left in the iommufd", sourceLocation: sourceLocation)
        try ctx.close()
    }()
    #expect(MockIOMMU.fdCountSettles(at: before),
            "fds leaked or closed twice: now \(Guest.openFDs().filter { !fdsBefore.contains($0) }), gone \(fdsBefore.filter { !Guest.openFDs().contains($0) })",
            sourceLocation: sourceLocation)
}

/// ``withMockContext(_:sourceLocation:)`` with the most common start: an IOAS
/// and a mock device attached to it, both alive until `body` returns.
func withMockDevice(_ body: (IOMMUFD, IOAS, MockDevice) throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) throws {
    try withMockContext({ ctx in
        let ioas = try IOAS(ctx)
        let dev = try MockDevice(attachedTo: ioas)
        try body(ctx, ioas, dev)
        withExtendedLifetime((ioas, dev)) {}
    }, sourceLocation: sourceLocation)
}

/// The error of `body`, which must fail with `errno`.
@discardableResult
func expectErrno(_ errno: Errno, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> VFIOError? {
    do {
        try body()
        Issue.record("expected \(errno.name), got success", sourceLocation: sourceLocation)
        return nil
    } catch let e as VFIOError {
        #expect(e.errno == errno, "\(e)", sourceLocation: sourceLocation)
        return e
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

let mockBase = MockIOMMU.apertureStart  // 0x100_0000

/// How soon a cancel or a close must end a queue wait. A wait that missed its wake-up
/// would sit until the test times out, so 1 s tells the two apart with room for a
/// loaded machine: an ASan guest boot on a busy host once took 248 ms to cancel
/// (the bound was 50 ms; QueueWaitTests uses the same 1 s on the host).
let promptWait: Duration = .seconds(1)

/// Failures collected from concurrent tasks.
final class FailureLog: Sendable {
    private let list = Mutex<[String]>([])
    func add(_ s: String) { list.withLock { $0.append(s) } }
    var entries: [String] { list.withLock { $0 } }
}

extension IOMMUFDMockTests {
    // MARK: objects, destroy, ids

    @Suite struct Objects {
        @Test func objectIDZeroIsNeverValid() throws {
            try withMockContext { ctx in
                expectErrno(.noSuchFileOrDirectory) { try ctx.destroy(objectID: 0) }
                let ioas = try IOAS(ctx)
                #expect(ioas.objectID != 0)
                let buf = try DMABuffer(length: 4096)
                // IOAS 0 does not exist: the raw map on id 0 fails ENOENT.
                var arg = iommu_ioas_map.make()
                arg.flags = UInt32(IOMMU_IOAS_MAP_READABLE.rawValue)
                arg.ioas_id = 0
                arg.user_va = UInt64(UInt(bitPattern: buf.baseAddress))
                arg.length = 4096
                expectErrno(.noSuchFileOrDirectory) { try ctx.unsafeIoctl(IOMMU_IOAS_MAP, as: .ioctl(.iommuIOASMap), &arg) }
            }
        }

        @Test func ioasAllocAndDestroy() throws {
            try withMockContext { ctx in
                let a = try IOAS(ctx), b = try IOAS(ctx)
                #expect(a.objectID != b.objectID)
                try a.destroy()
                try a.destroy()  // idempotent
                expectErrno(.noSuchFileOrDirectory) { try ctx.destroy(objectID: a.objectID) }
                withExtendedLifetime(b) {}
            }
        }

        @Test func destroyingAnIOASInUseIsEBUSY() throws {
            try withMockDevice { ctx, ioas, dev in
                let e = expectErrno(.resourceBusy) { try ioas.destroy() }
                #expect(e?.description.contains("still in use") == true)
                #expect(e?.description.contains("IOAS \(ioas.objectID)") == true)
                try dev.destroy()
                try ioas.destroy()
            }
        }

        @Test func hwptInUseIsEBUSYAndReplaceMovesTheDevice() throws {
            try withMockDevice { ctx, ioas, dev in
                let autoDomain = dev.hwptID
                let hwpt = try HWPT(ioas: ioas, device: dev.deviceID)
                #expect(hwpt.objectID != autoDomain)
                #expect(try dev.replace(with: hwpt) == hwpt.objectID)
                // The HWPT maps what the IOAS maps.
                let buf = try DMABuffer(length: 8192)
                let m = try ioas.map(buf, at: IOVA(mockBase))
                try MockIOMMU.checkMap(ctx, hwpt: hwpt.objectID, iova: mockBase, length: 8192,
                                       address: UnsafeRawPointer(buf.baseAddress))
                expectErrno(.resourceBusy) { try hwpt.destroy() }
                try dev.replace(with: ioas)
                try hwpt.destroy()
                try m.unmap()
            }
        }
    }

    // MARK: stale ids, inert mappings, shared contexts

    @Suite struct Lifetimes {
        /// The kernel hands a destroyed IOAS's id to the next IOAS at once. A
        /// destroy with live mappings is refused; once destroyed, the old
        /// owner and its mappings never reach the new IOAS.
        @Test func aDestroyedIOASIsNeverReachedThroughItsReusedID() throws {
            try withMockContext { ctx in
                let a = try IOAS(ctx)
                let bufA = try DMABuffer(length: 8192), bufB = try DMABuffer(length: 8192)
                var old: DMAMapping? = try a.map(bufA, at: IOVA(mockBase))
                let refused = #expect(throws: VFIOError.self) { try a.destroy() }
                #expect(refused?.errno == nil && refused?.description.contains("1 live DMAMapping") == true,
                        "\(String(describing: refused))")
                #expect(try a.unmapAll() == 8192)  // the mapping is inert now
                try a.destroy()
                let b = try IOAS(ctx)
                #expect(b.objectID == a.objectID, "iommufd reuses the lowest free id")
                let dev = try MockDevice(attachedTo: b)
                let newer = try b.map(bufB, at: IOVA(mockBase))
                old = nil  // must not unmap b's mapping at the same id and IOVA
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: mockBase, length: 8192,
                                       address: UnsafeRawPointer(bufB.baseAddress))
                // Every operation of the destroyed owner: refused, naming it.
                for (name, op) in [("map", { _ = try a.map(bufA, at: IOVA(mockBase + 0x10_0000)) }),
                                   ("unmapAll", { _ = try a.unmapAll() }),
                                   ("iovaRanges", { _ = try a.iovaRanges() }),
                                   ("HWPT", { _ = try HWPT(ioas: a, device: dev.deviceID) })] as [(String, () throws -> Void)] {
                    do {
                        try op()
                        Issue.record("\(name) on a destroyed IOAS succeeded")
                    } catch let e as VFIOError {
                        #expect(e.errno == nil && e.description.contains("\(a.label) was destroyed"), "\(name): \(e)")
                    }
                }
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: mockBase, length: 8192,
                                       address: UnsafeRawPointer(bufB.baseAddress))
                try newer.unmap()
                try dev.destroy()
                withExtendedLifetime(old) {}
            }
        }

        /// unmapAll() takes the mappings from under their DMAMappings: they
        /// become inert and never unmap the newer mapping at their IOVA.
        @Test func unmapAllLeavesDMAMappingsInert() throws {
            try withMockDevice { ctx, ioas, dev in
                let buf = try DMABuffer(length: 16384)
                let p = UnsafeRawPointer(buf.baseAddress)
                var first: DMAMapping? = try ioas.map(buf, at: IOVA(mockBase))
                let second = try ioas.map(buf, at: IOVA(mockBase + 0x10_0000))
                #expect(try MockIOMMU.pinCount(ctx, address: p, length: buf.length, is: 2))
                #expect(try ioas.unmapAll() == 32768)
                #expect(try MockIOMMU.pinCount(ctx, address: p, length: buf.length, is: 0))
                let newer = try ioas.map(buf, at: IOVA(mockBase))
                first = nil
                try second.unmap()  // nothing left to unmap: no error
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: mockBase, length: 16384, address: p)
                #expect(try MockIOMMU.pinCount(ctx, address: p, length: buf.length, is: 1))
                try newer.unmap()
                withExtendedLifetime(first) {}
            }
        }

        /// Many threads map and unmap disjoint ranges of one IOAS while
        /// another calls unmapAll(): no operation fails, none unmaps another's
        /// range, and every page is unpinned at the end.
        @Test func concurrentMapsUnmapsAndUnmapAll() async throws {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            let workers = 4, rounds = 100
            let buffers = try (0..<workers).map { _ in try DMABuffer(length: 8192) }
            let failures = FailureLog()
            await withTaskGroup(of: Void.self) { group in
                for w in 0..<workers {
                    group.addTask {
                        let iova = IOVA(mockBase + UInt64(w) * 0x10_0000)
                        for r in 0..<rounds {
                            do throws(VFIOError) {
                                let m = try ioas.map(buffers[w], at: iova)
                                if r % 2 == 0 { try m.unmap() } else { _ = consume m }
                            } catch { failures.add("worker \(w) round \(r): \(error)") }
                            await Task.yield()
                        }
                    }
                }
                group.addTask {
                    for r in 0..<rounds {
                        do throws(VFIOError) { _ = try ioas.unmapAll() } catch { failures.add("unmapAll \(r): \(error)") }
                        await Task.yield()
                    }
                }
            }
            #expect(failures.entries == [])
            #expect(try ioas.unmapAll() == 0)
            for b in buffers {
                #expect(try MockIOMMU.pinCount(ctx, address: UnsafeRawPointer(b.baseAddress), length: b.length, is: 0))
            }
            try dev.destroy()
            try ioas.destroy()
            try ctx.close()
        }

        /// An iommufd shared with another process (here: a second reference
        /// to the same open file, as a passed or inherited fd is). Closing our
        /// fd destroys nothing in the kernel, so close() destroys what this
        /// process allocated, newest first; while something of ours cannot go
        /// (a device still attached), close() refuses and keeps the fd.
        @Test func closingASharedContextLeavesNothingOfOursBehind() throws {
            let before = Guest.openFDCount()
            let theirs = try IOMMUFD()
            let theirIOAS = try IOAS(theirs)  // the other process's object: must survive our close
            let ours = IOMMUFD(adopting: try theirs.fd.withDescriptor { dup($0) }, label: "adopted iommufd")
            let ioas = try IOAS(ours)
            let dev = try MockDevice(attachedTo: ioas)
            let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
            let queue = try FaultQueue(ours)
            let nested = try HWPT(nestedOn: parent, device: dev.deviceID, data: HardwarePageTables.selftestData(),
                                  faultQueue: queue)
            let viommu = try VIOMMU(device: dev.deviceID, parent: parent, type: MockIOMMU.viommuType)
            let vdev = try VDevice(viommu: viommu, device: dev.deviceID, virtualID: 0x42)
            let mapping = try ioas.map(try DMABuffer(length: 4096), at: IOVA(mockBase))
            let ids = [ioas.objectID, parent.objectID, queue.objectID, nested.objectID, viommu.objectID, vdev.objectID]
            // The mock device is attached to the IOAS's domain: the IOAS cannot go yet.
            let refused = #expect(throws: VFIOError.self) { try ours.close() }
            #expect(refused?.description.contains("\(ioas.label): EBUSY") == true, "\(String(describing: refused))")
            #expect(!ours.fd.isClosed)
            try dev.destroy()
            try ours.close()
            #expect(ours.fd.isClosed)
            // Through the other process's fd: none of our ids exists any more.
            for id in ids {
                expectErrno(.noSuchFileOrDirectory) { try theirs.destroy(objectID: id) }
            }
            #expect(try theirIOAS.iovaRanges().ranges.count == 1)
            try mapping.unmap()  // inert: the IOAS took it with it
            #expect(throws: VFIOError.self) { _ = try ioas.iovaRanges() }
            withExtendedLifetime((nested, vdev)) {}
            try theirIOAS.destroy()
            #expect(MockIOMMU.leftoverObjects(theirs) == [])
            try theirs.close()
            #expect(MockIOMMU.fdCountSettles(at: before), "fds leaked")
        }
    }

    // MARK: map / unmap

    @Suite struct MapUnmap {
        @Test func mapFixedAndKernelChosenAndPinsReturnAfterUnmap() throws {
            try withMockDevice { ctx, ioas, dev in
                let buf = try DMABuffer(length: 16384)
                let p = UnsafeRawPointer(buf.baseAddress)
                #expect(try MockIOMMU.pinCount(ctx, address: p, length: buf.length, is: 0))
                let fixed = try ioas.map(buf, at: IOVA(mockBase))
                #expect(fixed.iova == IOVA(mockBase))
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: mockBase, length: 16384, address: p)
                #expect(try MockIOMMU.pinCount(ctx, address: p, length: buf.length, is: 1))

                let buf2 = try DMABuffer(length: 4096)
                let chosen = try ioas.map(buf2, at: nil, writable: false)
                let ranges = try ioas.iovaRanges()
                #expect(ranges.contains(iova: chosen.iova, length: 4096))
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: chosen.iova.rawValue, length: 4096,
                                       address: UnsafeRawPointer(buf2.baseAddress))

                try fixed.unmap()
                #expect(try MockIOMMU.pinCount(ctx, address: p, length: buf.length, is: 0))
                do { _ = consume chosen }  // deinit unmaps
                #expect(try ioas.unmapAll() == 0)
            }
        }

        @Test func unsafeMapOfCallerMemory() throws {
            try withMockDevice { ctx, ioas, dev in
                let mem = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
                defer { mem.deallocate() }
                let iova = try ioas.unsafeMap(address: mem, length: 8192, at: IOVA(mockBase + 0x10000))
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: iova.rawValue, length: 8192, address: mem)
                #expect(try ioas.unmap(iova: iova, length: 8192) == 8192)
            }
        }

        @Test func overlappingFixedMapsAreEEXIST() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let a = try DMABuffer(length: 8192), b = try DMABuffer(length: 8192)
                let m = try ioas.map(a, at: IOVA(mockBase))
                let e = expectErrno(.fileExists) { _ = try ioas.map(b, at: IOVA(mockBase + 4096)) }
                #expect(e?.description.contains("overlap") == true)
                try m.unmap()
            }
        }

        @Test func unmapThatSplitsAMappingIsENOENT() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let buf = try DMABuffer(length: 8192)
                let iova = try ioas.unsafeMap(address: UnsafeRawPointer(buf.baseAddress), length: 8192, at: IOVA(mockBase))
                let e = expectErrno(.noSuchFileOrDirectory) { _ = try ioas.unmap(iova: iova, length: 4096) }
                #expect(e?.description.contains("splits a mapping") == true)
                #expect(try ioas.unmap(iova: iova, length: 8192) == 8192)
                expectErrno(.noSuchFileOrDirectory) { _ = try ioas.unmap(iova: iova, length: 8192) }
                withExtendedLifetime(buf) {}
            }
        }

        @Test func unmapAllOnAnEmptyIOASIsFine() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                #expect(try ioas.unmapAll() == 0)
                let buf = try DMABuffer(length: 4096)
                let p = UnsafeRawPointer(buf.baseAddress)
                _ = try ioas.unsafeMap(address: p, length: 4096, at: IOVA(mockBase))
                _ = try ioas.unsafeMap(address: p, length: 4096, at: IOVA(mockBase + 0x100000))
                #expect(try ioas.unmapAll() == 8192)
                #expect(try ioas.unmapAll() == 0)
                withExtendedLifetime(buf) {}
            }
        }

        @Test func aShortUnmapIsAnError() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let buf = try DMABuffer(length: 4096)
                let p = UnsafeRawPointer(buf.baseAddress)
                _ = try ioas.unsafeMap(address: p, length: 4096, at: IOVA(mockBase))
                _ = try ioas.unsafeMap(address: p, length: 4096, at: IOVA(mockBase + 0x4000))
                do {
                    _ = try ioas.unmap(iova: IOVA(mockBase), length: 0x8000)
                    Issue.record("a short unmap must throw")
                } catch let error as VFIOError {
                    #expect(error.errno == nil)
                    #expect(error.description.contains("unmapped 8192"))
                }
                #expect(try ioas.unmapAll() == 0)  // both were unmapped
                withExtendedLifetime(buf) {}
            }
        }

        @Test func misalignedAndWrappingRangesAreRejected() throws {
            try withMockDevice { ctx, ioas, dev in
                let buf = try DMABuffer(length: 8192)
                let p = UnsafeRawPointer(buf.baseAddress)
                let e = expectErrno(.invalidArgument) { _ = try ioas.unsafeMap(address: p, length: 8192, at: IOVA(mockBase + 1)) }
                #expect(e?.description.contains("alignment") == true)
                expectErrno(.invalidArgument) { _ = try ioas.unsafeMap(address: p + 1, length: 4096, at: IOVA(mockBase)) }
                expectErrno(.overflow) { _ = try ioas.unsafeMap(address: p, length: 8192, at: IOVA(UInt64.max - 4095)) }
                expectErrno(.overflow) { _ = try ioas.unmap(iova: IOVA(UInt64.max - 4095), length: 8192) }
                // Neither readable nor writable.
                expectErrno(.invalidArgument) {
                    _ = try ioas.unsafeMap(address: p, length: 8192, at: IOVA(mockBase), readable: false, writable: false)
                }
                #expect(try ioas.unmapAll() == 0)
            }
        }

        @Test(arguments: [IOMMUFD.RlimitMode.perUser, .perProcess])
        func memlockExhaustionIsENOMEMWithTheLimit(_ mode: IOMMUFD.RlimitMode) throws {
            try withMockContext { ctx in
                try ctx.setRlimitMode(mode)
                #expect(try ctx.rlimitMode() == mode)
                let ioas = try IOAS(ctx)
                let dev = try MockDevice(attachedTo: ioas)
                let buf = try DMABuffer(length: 1 << 20)
                let err: VFIOError? = try Unprivileged.withMemlockLimit(65536) {
                    expectErrno(.noMemory) { _ = try ioas.map(buf, at: IOVA(mockBase)) }
                }
                let text = err?.description ?? ""
                #expect(text.contains("RLIMIT_MEMLOCK is 65536 bytes"), "\(text)")
                #expect(text.contains("asked to pin 1048576 bytes"), "\(text)")
                #expect(try MockIOMMU.pinCount(ctx, address: UnsafeRawPointer(buf.baseAddress),
                                               length: buf.length, is: 0))
                // With the limit back, the same map works.
                let m = try ioas.map(buf, at: IOVA(mockBase))
                try m.unmap()
                withExtendedLifetime(dev) {}
            }
        }

        @Test func mapFileOfAMemfd() throws {
            try withMockDevice { ctx, ioas, dev in
                let buf = try DMABuffer(length: 16384, backing: .memfd)
                buf.fill(0x5a)
                let m = try ioas.mapFile(buf, at: IOVA(mockBase))
                try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: mockBase, length: 16384,
                                       address: UnsafeRawPointer(buf.baseAddress))
                let access = try MockAccess(ioas: ioas)
                #expect(try access.read(iova: mockBase + 8000, count: 4) == [0x5a, 0x5a, 0x5a, 0x5a])
                access.close()
                // A kernel-chosen IOVA, read-only.
                let m2 = try ioas.mapFile(buf, at: nil, writable: false)
                #expect(m2.iova != m.iova)
                // Not a memfd buffer: refused before the kernel is asked.
                let anon = try DMABuffer(length: 4096)
                #expect(throws: VFIOError.self) { _ = try ioas.mapFile(anon, at: nil) }
                try m2.unmap()
                try m.unmap()
            }
        }

        @Test func changeProcessNeedsFileMappingsOnly() throws {
            try withMockDevice { ctx, ioas, dev in
                let file = try DMABuffer(length: 8192, backing: .memfd)
                let fm = try ioas.mapFile(file, at: IOVA(mockBase))
                try ctx.changeProcess()
                let anon = try DMABuffer(length: 4096)
                let um = try ioas.map(anon, at: IOVA(mockBase + 0x100000))
                let e = expectErrno(.invalidArgument) { try ctx.changeProcess() }
                #expect(e?.description.contains("file mapping") == true)
                try um.unmap()
                try fm.unmap()
            }
        }
    }

    // MARK: copy, ranges, allowed IOVAs, options, compat IOAS

    @Suite struct AddressSpace {
        @Test func copyBetweenIOASes() throws {
            try withMockContext { ctx in
                let src = try IOAS(ctx), dst = try IOAS(ctx)
                let srcDev = try MockDevice(attachedTo: src), dstDev = try MockDevice(attachedTo: dst)
                let buf = try DMABuffer(length: 8192)
                let p = UnsafeRawPointer(buf.baseAddress)
                let m = try src.map(buf, at: IOVA(mockBase))
                let copied = try dst.copy(m, to: IOVA(mockBase + 0x20000))
                try MockIOMMU.checkMap(ctx, hwpt: dstDev.hwptID, iova: mockBase + 0x20000, length: 8192, address: p)
                // The copy sees the same bytes (read through the destination IOAS by a mock access).
                buf.write([1, 2, 3, 4, 5], at: 100)
                let access = try MockAccess(ioas: dst)
                #expect(try access.read(iova: mockBase + 0x20000 + 100, count: 5) == [1, 2, 3, 4, 5])
                try access.write(iova: mockBase + 0x20000 + 4096, [9, 8, 7])
                #expect(buf.read(at: 4096, count: 3) == [9, 8, 7])
                // The copy is a live DMAMapping of dst: VFIOKit refuses before the kernel (which would
                // answer EBUSY here anyway: the access uses dst).
                let refused = #expect(throws: VFIOError.self) { try dst.destroy() }
                #expect(refused?.errno == nil && refused?.description.contains("1 live DMAMapping") == true)
                access.close()
                let raw = try dst.copy(from: src, sourceIOVA: IOVA(mockBase), length: 8192, to: nil)
                try MockIOMMU.checkMap(ctx, hwpt: dstDev.hwptID, iova: raw.rawValue, length: 8192, address: p)
                #expect(try dst.unmap(iova: raw, length: 8192) == 8192)
                // A source range that is not mapped.
                let e = expectErrno(.noSuchFileOrDirectory) { _ = try dst.copy(from: src, sourceIOVA: IOVA(mockBase + 0x800000), length: 4096, to: nil) }
                #expect(e?.description.contains("not exactly covered") == true)
                try copied.unmap()
                try m.unmap()
                withExtendedLifetime((srcDev, dstDev)) {}
            }
        }

        @Test func iovaRangesGrowPastTheFirstGuessAndReportAlignment() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let empty = try ioas.iovaRanges()
                #expect(empty.ranges.count == 1)
                #expect(empty.ranges.first?.lowerBound == 0)
                #expect(empty.alignment >= 1)
                let dev = try MockDevice(attachedTo: ioas)
                let attached = try ioas.iovaRanges()
                #expect(attached.ranges == [IOVA(MockIOMMU.apertureStart)...IOVA(MockIOMMU.apertureLast)])
                // Seven holes punched into the aperture: eight ranges, more than the first call's room (4).
                for i in 1...7 {
                    try MockIOMMU.addReserved(ioas, start: mockBase + UInt64(i) * 0x100000, length: 0x1000)
                }
                let split = try ioas.iovaRanges()
                #expect(split.ranges.count == 8)
                #expect(split.ranges.first == IOVA(MockIOMMU.apertureStart)...IOVA(mockBase + 0x100000 - 1))
                withExtendedLifetime(dev) {}
            }
        }

        @Test func allowedIOVAsSteerKernelChosenMaps() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let window = IOVA(mockBase + 0x400000)...IOVA(mockBase + 0x4fffff)
                try ioas.allowIOVAs([window])
                let buf = try DMABuffer(length: 8192)
                let m = try ioas.map(buf, at: nil)
                #expect(window.contains(m.iova) && window.contains(m.iova + 8191))
                // A one-byte range: rejected.
                expectErrno(.invalidArgument) { try ioas.allowIOVAs([IOVA(mockBase + 0x2000)...IOVA(mockBase + 0x2000)]) }  // the kernel wants start < last
                try m.unmap()
                // A mock device cannot translate below its aperture: with that range allowed, attach fails.
                try ioas.allowIOVAs([0x1000...0xfffff])
                #expect(throws: VFIOError.self) { _ = try MockDevice(attachedTo: ioas) }
                try ioas.allowIOVAs([])
                let dev = try MockDevice(attachedTo: ioas)
                try dev.destroy()
            }
        }

        @Test func rlimitModeOption() throws {
            try withMockContext { ctx in
                #expect(try ctx.rlimitMode() == .perUser)
                try ctx.setRlimitMode(.perProcess)
                #expect(try ctx.rlimitMode() == .perProcess)
                try ctx.setRlimitMode(.perUser)
                let ioas = try IOAS(ctx)
                let e = expectErrno(.resourceBusy) { try ctx.setRlimitMode(.perProcess) }
                #expect(e?.description.contains("no objects") == true)
                withExtendedLifetime(ioas) {}
            }
        }

        @Test func hugePagesOption() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                #expect(try ioas.hugePages())
                try ioas.setHugePages(false)
                #expect(try !ioas.hugePages())
                try ioas.setHugePages(true)
                #expect(try ioas.hugePages())
            }
        }

        @Test func vfioCompatibilityIOAS() throws {
            try withMockContext { ctx in
                #expect(try ctx.compatibilityIOASID() == nil)
                let ioas = try IOAS(ctx)
                try ctx.setCompatibilityIOAS(ioas)
                #expect(try ctx.compatibilityIOASID() == ioas.objectID)
                try ctx.clearCompatibilityIOAS()
                #expect(try ctx.compatibilityIOASID() == nil)
            }
        }

        @Test func unknownFlagsAreRejected() throws {
            try withMockDevice { ctx, ioas, dev in
                let buf = try DMABuffer(length: 4096)
                var map = iommu_ioas_map.make()
                map.flags = UInt32(IOMMU_IOAS_MAP_READABLE.rawValue) | (1 << 31)
                map.ioas_id = ioas.objectID
                map.user_va = UInt64(UInt(bitPattern: buf.baseAddress))
                map.length = 4096
                expectErrno(.notSupported) { try ctx.unsafeIoctl(IOMMU_IOAS_MAP, as: .ioctl(.iommuIOASMap), &map) }
                expectErrno(.notSupported) { _ = try HWPT(ioas: ioas, device: dev.deviceID, flags: .init(rawValue: 1 << 30)) }
                var opt = iommu_option.make()
                opt.option_id = 0xbad
                expectErrno(.notSupported) { try ctx.unsafeIoctl(IOMMU_OPTION, as: .ioctl(.iommuOption), &opt) }
            }
        }

        @Test func featuresOfThisKernel() throws {
            try withMockContext { ctx in
                let f = try ctx.features()
                #expect(f.missingRequests == [], "\(f)")
                #expect(f.supportedRequests.count == IOMMUFDFeatures.requests.count)
                #expect(f.ioasMapFlags == 7)
                #expect(f.hugePagesOption)
                try f.require(.iommuHWQueueAlloc)
                var missing = f
                missing.supportedRequests.remove(.iommuHWQueueAlloc)
                do {
                    try missing.require(.iommuHWQueueAlloc)
                    Issue.record("require must throw")
                } catch let error as VFIOError {
                    #expect(error.description.contains("Linux 6.17"))
                }
            }
        }
    }

    // MARK: HWPTs, hw info, dirty tracking, invalidation, faults

    @Suite struct HardwarePageTables {
        @Test func hardwareInfoOfAMockDevice() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let dev = try MockDevice(attachedTo: ioas, flags: [.pasid])
                let info = try ctx.hardwareInfo(device: dev.deviceID)
                #expect(info.vendor == .selftest(flags: 0, testRegister: IOMMU_HW_INFO_SELFTEST_REGVAL))
                #expect(info.capabilities.contains(.dirtyTracking))
                #expect(info.maxPASIDLog2 == MockIOMMU.pasidWidth)
                let typed = try ctx.hardwareInfo(device: dev.deviceID, type: IOMMUHardwareInfo.selftestType)
                #expect(typed.dataType == IOMMUHardwareInfo.selftestType)
                let e = expectErrno(.noSuchFileOrDirectory) { _ = try ctx.hardwareInfo(device: 0xffff) }
                #expect(e?.description.contains("no bound device") == true)
                let plain = try MockDevice(attachedTo: ioas, flags: [.noDirtyTracking])
                #expect(try !ctx.hardwareInfo(device: plain.deviceID).capabilities.contains(.dirtyTracking))
                #expect(try ctx.supportedHWPTFlags(device: dev.deviceID) == [.nestParent, .dirtyTracking, .pasid])
                let plainFlags = try ctx.supportedHWPTFlags(device: plain.deviceID)
                #expect(plainFlags.contains(.nestParent) && !plainFlags.contains(.dirtyTracking))
                withExtendedLifetime((dev, plain)) {}
            }
        }

        @Test(arguments: [true, false])
        func dirtyTracking(clear: Bool) throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                // Map with mock-page-size PTEs, so a dirty PTE is exactly one bitmap page
                // (as the kernel's own selftest does).
                try ioas.setHugePages(false)
                let first = try MockDevice(attachedTo: ioas)
                let hwpt = try HWPT(ioas: ioas, device: first.deviceID, flags: .dirtyTracking)
                let dev = try MockDevice(attachedTo: hwpt)
                let buf = try DMABuffer(length: 65536)
                let m = try ioas.map(buf, at: IOVA(mockBase))
                try hwpt.setDirtyTracking(true)
                let page = MockIOMMU.pageSize
                var mark = [UInt64](repeating: 0, count: 1)
                // Even mock pages only: a host page (4 KiB) is one mock PTE covering two 2 KiB
                // mock pages, reported at its first (the kernel's selftest marks even bits too).
                mark[0] = 1 << 0 | 1 << 6 | 1 << 30
                #expect(try MockIOMMU.setDirty(ctx, hwpt: hwpt.objectID, iova: mockBase, length: 65536,
                                               pageSize: page, bitmap: &mark) == 3)
                let dirty = try hwpt.dirtyBitmap(iova: IOVA(mockBase), length: 65536, pageSize: page, clear: clear)
                #expect(dirty.pageCount == 32)
                #expect(dirty.dirtyCount == 3)
                let base = IOVA(mockBase)
                #expect(dirty.dirtyIOVAs == [base, base + 6 * page, base + 30 * page])
                #expect(dirty.isDirty(iova: base + (6 * page + 7)))
                #expect(!dirty.isDirty(page: 1))
                var again = try DirtyBitmap(iova: base, length: 65536, pageSize: page)
                try hwpt.readDirty(into: &again)
                #expect(again.dirtyCount == (clear ? 0 : 3))
                // Misaligned IOVA.
                expectErrno(.invalidArgument) { _ = try hwpt.dirtyBitmap(iova: IOVA(mockBase), length: 65536 + 512, pageSize: 512) }
                try hwpt.setDirtyTracking(false)
                try m.unmap()
                try dev.destroy()
                try hwpt.destroy()
                withExtendedLifetime(first) {}
            }
        }

        @Test func dirtyTrackingIsRefusedWithoutTheCapability() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let dev = try MockDevice(attachedTo: ioas, flags: [.noDirtyTracking])
                let e = expectErrno(.notSupported) { _ = try HWPT(ioas: ioas, device: dev.deviceID, flags: .dirtyTracking) }
                #expect(e?.hint?.contains("supportedHWPTFlags") == true)
                withExtendedLifetime(dev) {}
            }
        }

        static func selftestData(_ iotlb: UInt32 = MockIOMMU.iotlbDefault) -> HWPTData {
            var d = iommu_hwpt_selftest()
            d.iotlb = iotlb
            return .raw(type: MockIOMMU.hwptDataType, bytes: withUnsafeBytes(of: d) { Array($0) })
        }

        @Test func nestedHWPTAndInvalidationReportsPartialCompletion() throws {
            try withMockDevice { ctx, ioas, dev in
                let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
                let nested = try HWPT(nestedOn: parent, device: dev.deviceID, data: Self.selftestData())
                for i in 0..<4 {
                    try MockIOMMU.checkIOTLB(ctx, hwpt: nested.objectID, index: UInt32(i), expected: MockIOMMU.iotlbDefault)
                }
                try dev.replace(with: nested)
                expectErrno(.resourceBusy) { try parent.destroy() }
                // Entry 0 valid (iotlb 1), entry 1 invalid (iotlb 9 > max 3), entry 2 never reached.
                var reqs = [iommu_hwpt_invalidate_selftest](repeating: .init(), count: 3)
                reqs[0].iotlb_id = 1
                reqs[1].iotlb_id = 9
                reqs[2].iotlb_id = 2
                let stride = MemoryLayout<iommu_hwpt_invalidate_selftest>.stride
                let e = reqs.withUnsafeBytes { b in
                    expectErrno(.invalidArgument) {
                        _ = try nested.invalidate(dataType: MockIOMMU.hwptInvalidateType, entryLength: stride, count: 3, entries: b)
                    }
                }
                #expect(e?.description.contains("handled 1 of 3") == true, "\(String(describing: e))")
                try MockIOMMU.checkIOTLB(ctx, hwpt: nested.objectID, index: 1, expected: 0)
                try MockIOMMU.checkIOTLB(ctx, hwpt: nested.objectID, index: 2, expected: MockIOMMU.iotlbDefault)
                // Invalidate everything.
                var all = iommu_hwpt_invalidate_selftest()
                all.flags = IOMMU_TEST_INVALIDATE_FLAG_ALL
                let n = try withUnsafeBytes(of: &all) { b in
                    try nested.invalidate(dataType: MockIOMMU.hwptInvalidateType, entryLength: stride, count: 1, entries: b)
                }
                #expect(n == 1)
                for i in 0..<4 { try MockIOMMU.checkIOTLB(ctx, hwpt: nested.objectID, index: UInt32(i), expected: 0) }
                // A data type the mock does not know.
                expectErrno(.invalidArgument) { _ = try nested.invalidate([IntelVTdInvalidation.all]) }
                // Nested without NEST_PARENT parent: refused.
                let plain = try HWPT(ioas: ioas, device: dev.deviceID)
                expectErrno(.invalidArgument) { _ = try HWPT(nestedOn: plain, device: dev.deviceID, data: Self.selftestData()) }
                try dev.replace(with: ioas)
                try nested.destroy()
                try parent.destroy()
                try plain.destroy()
            }
        }

        @Test func pasidAttachOfAPASIDCapableHWPT() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let dev = try MockDevice(attachedTo: ioas, flags: [.pasid])
                let hwpt = try HWPT(ioas: ioas, device: dev.deviceID, flags: .pasid)
                // The RID is on the automatic domain, which is not PASID-compatible: refused.
                expectErrno(.invalidArgument) { try dev.attach(pasid: 100, to: hwpt) }
                let rid = try HWPT(ioas: ioas, device: dev.deviceID, flags: .pasid)
                try dev.replace(with: rid)
                try dev.attach(pasid: 100, to: hwpt)
                try dev.checkPASID(100, attachedTo: hwpt.objectID)
                expectErrno(.resourceBusy) { try hwpt.destroy() }
                try dev.detach(pasid: 100)
                try dev.checkPASID(100, attachedTo: 0)
                try hwpt.destroy()
                try dev.replace(with: ioas)
                try rid.destroy()
                withExtendedLifetime(dev) {}
            }
        }

        @Test func faultQueueDeliversPageFaultsAndTakesResponses() throws {
            try withMockDevice { ctx, ioas, dev in
                let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
                let queue = try FaultQueue(ctx)
                #expect(try queue.read().isEmpty)
                let iopf = try HWPT(nestedOn: parent, device: dev.deviceID, data: HardwarePageTables.selftestData(),
                                    faultQueue: queue)
                try dev.replace(with: iopf)
                try MockIOMMU.triggerPageFault(ctx, device: dev.deviceID, pasid: 1, group: 2,
                                               permissions: [.read, .write], address: 0xdead_b000)
                #expect(try queue.wait(timeout: .seconds(1)))
                let faults = try queue.read()
                #expect(faults.count == 1)
                let f = try #require(faults.first)
                #expect(f.deviceID == dev.deviceID)
                #expect(f.groupID == 2)
                #expect(f.permissions == [.read, .write])
                #expect(f.address == 0xdead_b000)
                #expect(f.isLastInGroup)
                try queue.respond(cookie: f.cookie, success: true)
                // A cookie that was answered already.
                expectErrno(.invalidArgument) { try queue.respond(cookie: f.cookie, success: true) }
                try dev.replace(with: ioas)
                try iopf.destroy()
                try queue.destroy()
                try parent.destroy()
            }
        }

        @Test func faultQueueFromAsyncCode() async throws {
            try MockIOMMU.requireAvailable()
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
            let queue = try FaultQueue(ctx)
            let iopf = try HWPT(nestedOn: parent, device: dev.deviceID, data: HardwarePageTables.selftestData(),
                                faultQueue: queue)
            try dev.replace(with: iopf)
            let waiter = Task { try await queue.next() }
            try await Task.sleep(for: .milliseconds(20))
            try MockIOMMU.triggerPageFault(ctx, device: dev.deviceID, pasid: 1, group: 7, permissions: [.read],
                                           address: 0x1000)
            let faults = try await waiter.value
            #expect(faults.map(\.groupID) == [7])
            try queue.respond(cookie: faults[0].cookie, success: false)
            try dev.replace(with: ioas)
            try iopf.destroy()
        }

        /// The async wait sits on the fault fd's readiness: cancelling it ends
        /// it promptly (``promptWait``), the queue still delivers afterwards, and
        /// destroying the queue ends a wait in progress with "closed".
        @Test func faultQueueAsyncWaitCancelsPromptlyAndEndsOnDestroy() async throws {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
            let queue = try FaultQueue(ctx)
            let iopf = try HWPT(nestedOn: parent, device: dev.deviceID, data: HardwarePageTables.selftestData(),
                                faultQueue: queue)
            try dev.replace(with: iopf)

            let cancelled = Task { try await queue.next() }
            try await Task.sleep(for: .milliseconds(100))
            let start = ContinuousClock.now
            cancelled.cancel()
            let result = await cancelled.result
            let latency = ContinuousClock.now - start
            #expect(latency < promptWait, "cancel took \(latency)")
            guard case .failure(let error) = result else {
                Issue.record("a cancelled next() returned \(result)")
                return
            }
            #expect((error as? VFIOError)?.detail == "cancelled", "\(error)")

            // The queue still works: a fault raised while a new wait sits in poll wakes it.
            let waiter = Task { try await queue.next() }
            try await Task.sleep(for: .milliseconds(50))
            try MockIOMMU.triggerPageFault(ctx, device: dev.deviceID, pasid: 1, group: 9, permissions: [.write],
                                           address: 0x2000)
            let faults = try await waiter.value
            #expect(faults.map(\.groupID) == [9])
            try queue.respond(cookie: faults[0].cookie, success: false)

            // Destroy while a task waits: it ends at once with "closed".
            try dev.replace(with: ioas)
            try iopf.destroy()
            let orphan = Task { try await queue.next() }
            try await Task.sleep(for: .milliseconds(50))
            let destroyStart = ContinuousClock.now
            try queue.destroy()
            let ended = await orphan.result
            #expect(ContinuousClock.now - destroyStart < promptWait, "destroy ended the wait after \(ContinuousClock.now - destroyStart)")
            guard case .failure(let closed) = ended else {
                Issue.record("next() returned after destroy: \(ended)")
                return
            }
            #expect((closed as? VFIOError)?.detail == "the fd was already closed", "\(closed)")
        }
    }

    // MARK: vIOMMU, vDEVICE, vEVENTQ, HW queue

    @Suite struct VirtualIOMMU {
        @Test func viommuVDeviceAndVEventQueueWithLostEvents() throws {
            try withMockDevice { ctx, ioas, dev in
                let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
                var data = iommu_viommu_selftest()
                data.in_data = 0xcafe
                let viommu = try VIOMMU(device: dev.deviceID, parent: parent, type: MockIOMMU.viommuType,
                                        data: withUnsafeBytes(of: data) { Array($0) })
                let out = viommu.outputData.withUnsafeBytes { $0.load(as: iommu_viommu_selftest.self) }
                #expect(out.out_data == 0xcafe)
                expectErrno(.notSupported) { _ = try VIOMMU(device: dev.deviceID, parent: parent, type: 0x1234) }
                let nested = try HWPT(nestedOn: viommu, device: dev.deviceID, data: HardwarePageTables.selftestData())
                // A nested domain of a vIOMMU needs the device's vDEVICE first.
                expectErrno(.noSuchFileOrDirectory) { try dev.replace(with: nested) }
                expectErrno(.invalidArgument) { _ = try VEventQueue(viommu: viommu, type: MockIOMMU.veventqType, depth: 0, eventSize: 4) }
                let queue = try VEventQueue(viommu: viommu, type: MockIOMMU.veventqType, depth: 2, eventSize: 4)
                expectErrno(.fileExists) { _ = try VEventQueue(viommu: viommu, type: MockIOMMU.veventqType, depth: 2, eventSize: 4) }
                let vdev = try VDevice(viommu: viommu, device: dev.deviceID, virtualID: 0x99)
                expectErrno(.fileExists) { _ = try VDevice(viommu: viommu, device: dev.deviceID, virtualID: 0x99) }
                try dev.replace(with: nested)
                expectErrno(.resourceBusy) { try viommu.destroy() }

                try MockIOMMU.triggerVEvent(ctx, device: dev.deviceID)
                #expect(try queue.wait(timeout: .seconds(1)))
                let one = try queue.read()
                let expected = withUnsafeBytes(of: UInt32(0x99).littleEndian) { Array($0) }
                guard case .event(let seq0, let payload)? = one.first, one.count == 1 else {
                    Issue.record("expected one event, got \(one)")
                    return
                }
                #expect(payload == expected)
                // Three events into a queue of depth 2: one is lost.
                for _ in 0..<3 { try MockIOMMU.triggerVEvent(ctx, device: dev.deviceID) }
                let burst = try queue.read()
                #expect(burst.contains { if case .lostEvents = $0 { true } else { false } }, "\(burst)")
                let events = burst.compactMap { r -> UInt32? in if case .event(let s, _) = r { s } else { nil } }
                #expect(events.count == 2)
                #expect(events.allSatisfy { $0 != seq0 })
                // After the overflow was read, events flow again.
                try MockIOMMU.triggerVEvent(ctx, device: dev.deviceID)
                let after = try queue.read()
                #expect(after.count == 1)
                #expect(try queue.read().isEmpty)

                try dev.replace(with: ioas)
                try vdev.destroy()
                try queue.destroy()
                try nested.destroy()
                try viommu.destroy()
                try parent.destroy()
            }
        }

        @Test func viommuInvalidationReachesTheDeviceCache() throws {
            try withMockDevice { ctx, ioas, dev in
                let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
                let viommu = try VIOMMU(device: dev.deviceID, parent: parent, type: MockIOMMU.viommuType)
                let vdev = try VDevice(viommu: viommu, device: dev.deviceID, virtualID: 0x99)
                for i in 0..<4 {
                    try MockIOMMU.checkDeviceCache(ctx, device: dev.deviceID, index: UInt32(i),
                                                   expected: MockIOMMU.deviceCacheDefault)
                }
                var reqs = [iommu_viommu_invalidate_selftest](repeating: .init(), count: 2)
                reqs[0].vdev_id = 0x99
                reqs[0].cache_id = 0
                reqs[1].vdev_id = 0x99
                reqs[1].cache_id = 9  // > max: fails
                let stride = MemoryLayout<iommu_viommu_invalidate_selftest>.stride
                let e = reqs.withUnsafeBytes { b in
                    expectErrno(.invalidArgument) {
                        _ = try viommu.invalidate(dataType: MockIOMMU.viommuInvalidateType, entryLength: stride, count: 2, entries: b)
                    }
                }
                #expect(e?.description.contains("handled 1 of 2") == true)
                try MockIOMMU.checkDeviceCache(ctx, device: dev.deviceID, index: 0, expected: 0)
                try MockIOMMU.checkDeviceCache(ctx, device: dev.deviceID, index: 1, expected: MockIOMMU.deviceCacheDefault)
                try vdev.destroy()
                try viommu.destroy()
                try parent.destroy()
            }
        }

        /// vEVENTQ from async code: an event raised while next() sits in poll
        /// wakes it; a cancelled wait ends promptly (``promptWait``).
        @Test func vEventQueueFromAsyncCode() async throws {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            let stack = try MockVEventStack(ioas, dev, depth: 4, virtualID: 0x77)
            let queue = stack.queue

            let waiter = Task { try await queue.next() }
            try await Task.sleep(for: .milliseconds(50))
            try MockIOMMU.triggerVEvent(ctx, device: dev.deviceID)
            let records = try await waiter.value
            let expected = withUnsafeBytes(of: UInt32(0x77).littleEndian) { Array($0) }
            #expect(records.count == 1)
            if case .event(_, let payload)? = records.first {
                #expect(payload == expected)
            } else {
                Issue.record("expected one event, got \(records)")
            }

            let cancelled = Task { try await queue.next() }
            try await Task.sleep(for: .milliseconds(100))
            let start = ContinuousClock.now
            cancelled.cancel()
            let result = await cancelled.result
            let latency = ContinuousClock.now - start
            #expect(latency < promptWait, "cancel took \(latency)")
            if case .failure(let error) = result {
                #expect((error as? VFIOError)?.detail == "cancelled", "\(error)")
            } else {
                Issue.record("a cancelled next() returned \(result)")
            }

            try stack.tearDown()
        }

        @Test func hwQueuePinsItsIOVA() throws {
            try withMockDevice { ctx, ioas, dev in
                let parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
                let viommu = try VIOMMU(device: dev.deviceID, parent: parent, type: MockIOMMU.viommuType)
                let page = UInt64(getpagesize())
                var buf: DMABuffer? = try DMABuffer(length: Int(page))
                weak let weakBuffer = buf
                // Not mapped yet.
                expectErrno(.noSuchFileOrDirectory) {
                    _ = try HWQueue(viommu: viommu, type: MockIOMMU.hwQueueType, index: 0, iova: IOVA(mockBase), length: page)
                }
                let m = try ioas.map(try #require(buf), at: IOVA(mockBase))
                buf = nil  // the mapping holds it
                expectErrno(.notSupported) {
                    _ = try HWQueue(viommu: viommu, type: UInt32(IOMMU_HW_QUEUE_TYPE_DEFAULT.rawValue), index: 0,
                                    iova: IOVA(mockBase), length: page)
                }
                let q = try HWQueue(viommu: viommu, type: MockIOMMU.hwQueueType, index: 0, iova: IOVA(mockBase), length: page)
                expectErrno(.fileExists) {
                    _ = try HWQueue(viommu: viommu, type: MockIOMMU.hwQueueType, index: 0, iova: IOVA(mockBase), length: page)
                }
                // The range is the mapping's: a raw unmap is refused before the kernel is asked.
                let raw = #expect(throws: VFIOError.self) { _ = try ioas.unmap(iova: IOVA(mockBase), length: page) }
                #expect(raw?.errno == nil && raw?.description.contains("DMAMapping") == true, "\(String(describing: raw))")
                // The mapping's own unmap: EBUSY. The pages stay mapped and pinned, so the buffer is kept for good.
                let failed = unmapError(m)
                #expect(failed?.errno == .resourceBusy)
                #expect(failed?.description.contains("HW queue") == true && failed?.description.contains("kept alive") == true,
                        "\(String(describing: failed))")
                expectErrno(.resourceBusy) { try viommu.destroy() }
                try q.destroy()
                // No DMAMapping owns the range any more: the caller unmaps it raw.
                #expect(try ioas.unmap(iova: IOVA(mockBase), length: page) == page)
                #expect(weakBuffer != nil, "the buffer of a mapping that failed to unmap was freed")
                try viommu.destroy()
                try parent.destroy()
            }
        }
    }
}
