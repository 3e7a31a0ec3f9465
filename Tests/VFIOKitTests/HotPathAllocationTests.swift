import CAllocationCount
import CVFIO
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The hot paths allocate nothing: each runs against the fake kernel while the
/// test bundle's interposed allocator counts this thread's allocations, so a
/// change that allocates per operation fails here, not only in the bench.
///
/// The fake kernel allocates for its own bookkeeping (it records every call);
/// each case therefore also issues the same syscalls straight to the fake
/// kernel (the baseline: what the kernel side costs) and the difference is
/// VFIOKit's. One allocation per operation makes it 1.0; amortized growth of
/// the fake kernel's call log is a few in the whole loop.
///
/// A sanitizer build interposes the allocator itself, so nothing is counted there:
/// Scripts/sanitize.sh leaves this suite out of its runs (`--skip`), and where it
/// runs, a build without counting fails it (`init`), never skips it.
@Suite struct HotPathAllocationTests {
    init() throws {
        try #require(vfiokit_allocations_counted() != 0, "this build does not count allocations (a sanitizer build?)")
    }

    static let rounds = 400

    /// Allocations per round of `op` beyond those of `baseline` (both on this thread).
    func extra(_ op: () throws -> Void, baseline: () -> Void) rethrows -> Double {
        for _ in 0..<8 { try op(); baseline() }  // warm up: first-use metadata, lazily grown tables
        let a = vfiokit_thread_allocations()
        for _ in 0..<Self.rounds { try op() }
        let b = vfiokit_thread_allocations()
        for _ in 0..<Self.rounds { baseline() }
        let c = vfiokit_thread_allocations()
        return (Double(b - a) - Double(c - b)) / Double(Self.rounds)
    }

    /// The last `count` ioctls the fake kernel saw, replayable with their recorded arguments.
    func lastIoctls(_ kernel: FakeKernel, _ count: Int) -> [(fd: Int32, request: UInt, bytes: [UInt8])] {
        kernel.calls.suffix(count).map { ($0.fd, $0.request, $0.bytes) }
    }

    func replay(_ kernel: FakeKernel, _ calls: inout [(fd: Int32, request: UInt, bytes: [UInt8])]) {
        for i in calls.indices {
            let (fd, request) = (calls[i].fd, calls[i].request)
            _ = calls[i].bytes.withUnsafeMutableBytes { kernel.ioctl(fd, request, $0.baseAddress) }
        }
    }

    @Test func iommufdMapAndUnmapBothPaths() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let buffer = try DMABuffer(length: 4096)
            let page = buffer.withUnsafeMutableBytes { UnsafeRawPointer($0.baseAddress!) }
            let iova: IOVA = 0x10_0000
            func unsafePath() throws {
                _ = try ioas.unsafeMap(address: page, length: 4096, at: iova)
                _ = try ioas.unmap(iova: iova, length: 4096)
            }
            try unsafePath()
            var calls = lastIoctls(model.kernel, 2)
            #expect(calls.map(\.request) == [IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP])
            let unsafe = try extra(unsafePath) { replay(model.kernel, &calls) }
            #expect(unsafe < 0.5, "IOAS unsafeMap + unmap allocates \(unsafe) times per pair")

            func bufferPath() throws {
                let m = try ioas.map(buffer, at: iova)
                try m.unmap()
            }
            try bufferPath()
            calls = lastIoctls(model.kernel, 2)
            #expect(calls.map(\.request) == [IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP])
            let safe = try extra(bufferPath) { replay(model.kernel, &calls) }
            #expect(safe < 0.5, "IOAS map(DMABuffer) + unmap allocates \(safe) times per pair")
        }
    }

    @Test func type1MapAndUnmap() throws {
        let kernel = type1Kernel()
        try Syscalls.withProvider(kernel) {
            let container = try VFIOContainer()
            let buffer = try DMABuffer(length: 4096)
            let page = buffer.withUnsafeMutableBytes { UnsafeRawPointer($0.baseAddress!) }
            func pair() throws {
                try container.unsafeMapDMA(address: page, length: 4096, at: 0x10_0000)
                _ = try container.unmapDMA(iova: 0x10_0000, length: 4096)
            }
            try pair()
            var calls = lastIoctls(kernel, 2)
            #expect(calls.map(\.request) == [VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA])
            let n = try extra(pair) { replay(kernel, &calls) }
            #expect(n < 0.5, "type1 unsafeMapDMA + unmapDMA allocates \(n) times per pair")
        }
    }

    @Test func configRead() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        RegionInfoTests.install(kernel)
        kernel.onFileIO { _, _, buffer, isWrite in
            if !isWrite { for i in 0..<buffer.count { buffer[i] = 0x5a } }
            return buffer.count
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let config = try device.configSpace()
            var acc: UInt32 = 0
            let fd = device.fd.numberForHandoff, offset = Int64(config.region.offset)
            let word = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 4)
            defer { word.deallocate() }
            let n = try extra({ acc ^= try config.read32(0) }) { _ = kernel.pread(fd, word, offset) }
            #expect(acc == 0 || acc == 0x5a5a_5a5a)
            #expect(n < 0.5, "config read32 allocates \(n) times per read")
            try device.close()
        }
    }

    @Test func mmioLoadAndStore() throws {
        let region = MMIOTrapTests.region(length: 4096)
        var acc: UInt32 = 0
        let loads = extra({ acc ^= region.load32(at: 4) }) {}
        let stores = extra({ region.store32(0x5a5a_5a5a, at: 4) }) {}
        #expect(acc == 0 || acc == 0x5a5a_5a5a)
        #expect(loads < 0.5, "MMIO load32 allocates \(loads) times per load")
        #expect(stores < 0.5, "MMIO store32 allocates \(stores) times per store")
    }

    @Test func eventfdWait() throws {
        let kernel = FakeKernel()
        try Syscalls.withProvider(kernel) {
            let e = try EventFD()
            let fd = e.fd.numberForHandoff
            var value: UInt64 = 0, one: UInt64 = 1
            let n = try extra({
                _ = Glibc.write(fd, &one, 8)
                let got = try e.wait(timeout: .seconds(1))
                precondition(got == 1)
            }) {
                _ = Glibc.write(fd, &one, 8)
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = kernel.poll(&p, 1, 1_000_000_000)
                _ = withUnsafeMutableBytes(of: &value) { kernel.read(fd, $0) }
            }
            #expect(n < 0.5, "EventFD.wait allocates \(n) times per wait")
        }
    }
}
