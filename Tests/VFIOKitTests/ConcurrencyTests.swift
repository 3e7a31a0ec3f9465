import CVFIO
import Foundation
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport
import VFIOSystem

/// Races found by the guest's concurrency tests (IOMMUFDMockTests/Concurrency), made
/// deterministic against the fake kernel.
@Suite struct ConcurrencyTests {
    /// A DMAMapping's unmap has left the kernel (the IOVAs are free) but not yet its
    /// bookkeeping when another thread maps its own memory at a kernel-chosen IOVA (the
    /// same one) and unmaps it: that unmap of the caller's own mapping must work, not be
    /// refused as "owned by DMAMapping values". The fake kernel holds the owner's unmap
    /// ioctl open until the other thread is done (or 300 ms have passed).
    @Test func aRawUnmapOfAReusedIOVAWaitsOutTheOwnersUnmapInsteadOfRefusing() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        let chosen: UInt64 = 0x4000_0000
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, a in
            a!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 2
            return 0
        }
        kernel.onIoctl(IOMMU_IOAS_MAP) { _, a in
            let m = a!.assumingMemoryBound(to: iommu_ioas_map.self)
            if m.pointee.flags & UInt32(IOMMU_IOAS_MAP_FIXED_IOVA.rawValue) == 0 { m.pointee.iova = chosen }
            return 0
        }
        final class Race: Sendable {
            let ioas = Mutex<IOAS?>(nil)
            /// Page-aligned memory of the other thread's mapping (an address: a pointer is not Sendable).
            let memory = UInt(bitPattern: UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096))
            let result = Mutex<String?>(nil)
            let started = Atomic<Bool>(false)
        }
        let race = Race()
        defer { UnsafeMutableRawPointer(bitPattern: race.memory)!.deallocate() }
        kernel.onIoctl(IOMMU_IOAS_UNMAP) { _, a in
            // The owner's unmap, in the kernel: the IOVAs are free now. Another thread maps there and unmaps.
            if !race.started.exchange(true, ordering: .relaxed), let ioas = race.ioas.withLock({ $0 }) {
                Thread {
                    let r: String
                    do throws(VFIOError) {
                        let iova = try ioas.unsafeMap(address: UnsafeRawPointer(bitPattern: race.memory)!, length: 4096, at: nil)
                        let n = try ioas.unmap(iova: iova, length: 4096)
                        r = n == 4096 ? "unmapped" : "unmapped \(n)"
                    } catch {
                        r = "\(error)"
                    }
                    race.result.withLock { $0 = r }
                }.start()
                let deadline = ContinuousClock.now + .milliseconds(300)
                while race.result.withLock({ $0 }) == nil && ContinuousClock.now < deadline { usleep(1000) }
            }
            return 0  // the whole range is unmapped: `length` stays as asked
        }
        try Syscalls.withProvider(kernel) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            race.ioas.withLock { $0 = ioas }
            let buffer = try DMABuffer(length: 4096)
            let mapping = try ioas.map(buffer, at: nil)
            #expect(mapping.iova.rawValue == chosen)
            try mapping.unmap()
            let deadline = ContinuousClock.now + .seconds(5)
            while race.result.withLock({ $0 }) == nil && ContinuousClock.now < deadline { usleep(1000) }
            #expect(race.result.withLock { $0 } == "unmapped")
            race.ioas.withLock { $0 = nil }
        }
    }
}
