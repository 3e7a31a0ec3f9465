import Dispatch
import Foundation
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// What the threads of a test share.
private final class Shared: Sendable {
    let failures = Mutex<[String]>([])
    let done = Atomic<Int>(0)
    let maps = Atomic<Int>(0)
    let refusals = Atomic<Int>(0)
    let destroyed = Atomic<Bool>(false)
    let stop = Atomic<Bool>(false)
    func fail(_ s: String) { failures.withLock { $0.append(s) } }
}

extension IOMMUFDMockTests {
    /// Many threads using one IOAS of the real iommufd at once (a mock domain
    /// attached, so the kernel can say what is mapped). Runs under ASan and TSan
    /// too (Scripts/sanitize.sh).
    @Suite struct Concurrency {
        /// Eight threads map and unmap disjoint ranges of one IOAS, 40 rounds each:
        /// half at fixed IOVAs, half at IOVAs the kernel chooses; alternately by an
        /// explicit unmap, by the mapping's deinit, and by a raw unsafeMap/unmap whose
        /// returned length must be exact. While a mapping lives the mock domain maps
        /// it to its buffer; afterwards the IOAS is empty and no page stays pinned.
        @Test func manyThreadsMapAndUnmapDisjointRangesOfOneIOAS() throws {
            try withMockDevice { ctx, ioas, dev in
                let hwpt = dev.hwptID
                let workers = 8, rounds = 40, length = 8192
                let buffers = try (0..<workers).map { _ in try DMABuffer(length: length) }
                let shared = Shared()
                onThreads(workers) { w in
                    // Fixed IOVAs high in the mock aperture; the kernel chooses the lowest free ones.
                    let fixed: IOVA? = w % 2 == 0 ? IOVA(mockBase + 0x4000_0000 + UInt64(w) * 0x10_0000) : nil
                    let p = UnsafeRawPointer(buffers[w].baseAddress)
                    for r in 0..<rounds {
                        do throws(VFIOError) {
                            switch r % 3 {
                            case 0:
                                let m = try ioas.map(buffers[w], at: fixed)
                                try MockIOMMU.checkMap(ctx, hwpt: hwpt, iova: m.iova.rawValue, length: UInt64(length), address: p)
                                try m.unmap()
                            case 1:
                                let m = try ioas.map(buffers[w], at: fixed)
                                try MockIOMMU.checkMap(ctx, hwpt: hwpt, iova: m.iova.rawValue, length: UInt64(length), address: p)
                                _ = consume m  // deinit unmaps
                            default:
                                let iova = try ioas.unsafeMap(address: p, length: length, at: fixed)
                                try MockIOMMU.checkMap(ctx, hwpt: hwpt, iova: iova.rawValue, length: UInt64(length), address: p)
                                let n = try ioas.unmap(iova: iova, length: UInt64(length))
                                if n != UInt64(length) { shared.fail("worker \(w) round \(r): unmap gave \(n)") }
                            }
                            shared.done.add(1, ordering: .relaxed)
                        } catch {
                            shared.fail("worker \(w) round \(r): \(error)")
                        }
                    }
                }
                #expect(shared.failures.withLock { $0 } == [])
                let completed = shared.done.load(ordering: .relaxed)
                #expect(completed == workers * rounds)
                #expect(try ioas.unmapAll() == 0, "a mapping was left in the IOAS")
                for b in buffers {
                    #expect(try MockIOMMU.pinCount(ctx, address: UnsafeRawPointer(b.baseAddress), length: length, is: 0))
                }
            }
        }

        /// Threads keep mapping and unmapping in one IOAS while another destroys it:
        /// destroy is refused (without an ioctl) while a mapping lives and works once
        /// none does; after it, every map says the IOAS is destroyed. No other error,
        /// no crash, and no object or fd is left (withMockContext checks).
        @Test func destroyRacingMapsRefusesThenWins() throws {
            try withMockContext { ctx in
                let ioas = try IOAS(ctx)
                let workers = 4, length = 4096
                let buffers = try (0..<workers).map { _ in try DMABuffer(length: length) }
                let shared = Shared()
                let start = ContinuousClock.now
                onThreads(workers + 1) { w in
                    if w == workers {
                        while shared.maps.load(ordering: .relaxed) < 100 && ContinuousClock.now - start < .seconds(5) { sched_yield() }
                        while true {
                            do throws(VFIOError) {
                                try ioas.destroy()
                                shared.destroyed.store(true, ordering: .sequentiallyConsistent)
                                return
                            } catch {
                                if error.errno != nil { shared.fail("destroy: \(error)"); shared.stop.store(true, ordering: .relaxed); return }
                                shared.refusals.add(1, ordering: .relaxed)
                                // Never starve: after 5 s the workers stop and destroy must then work.
                                if ContinuousClock.now - start > .seconds(5) { shared.stop.store(true, ordering: .relaxed) }
                                sched_yield()
                            }
                        }
                    }
                    let iova = IOVA(mockBase + UInt64(w) * 0x10_0000)
                    while !shared.stop.load(ordering: .relaxed) {
                        do throws(VFIOError) {
                            let m = try ioas.map(buffers[w], at: iova)
                            shared.maps.add(1, ordering: .relaxed)
                            try m.unmap()
                        } catch {
                            if error.description.contains("destroyed") { return }  // destroy() won the race
                            shared.fail("worker \(w): \(error)")
                            return
                        }
                        sched_yield()
                    }
                }
                #expect(shared.failures.withLock { $0 } == [])
                let didDestroy = shared.destroyed.load(ordering: .sequentiallyConsistent)
                #expect(didDestroy)
                print("destroy racing maps: \(shared.maps.load(ordering: .relaxed)) maps, \(shared.refusals.load(ordering: .relaxed)) refusals, "
                      + "stopped workers: \(shared.stop.load(ordering: .relaxed))")
            }
        }
    }
}
