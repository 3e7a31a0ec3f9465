import CAllocationCount
import Testing
import VFIOKit
import VFIOKitTestSupport
@testable import VFIOObjects

/// A device records the events that revoke its dma-bufs (close, reset, memory
/// decoding off, low power) on every close and reset, exported or not; the words
/// are built only when a mapping's revocation is read, so closing a device costs
/// no string (it cost ~1,700 instructions and an allocation of every open-to-attached
/// cycle, callgrind of vfiokit-bench in the guest).
@Suite struct RevocationRecordTests {
    @Test func recordingAClosedDeviceAllocatesNothing() throws {
        try #require(vfiokit_allocations_counted() != 0, "this build does not count allocations (a sanitizer build?)")
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            for _ in 0..<8 { device.noteClosed() }
            let before = vfiokit_thread_allocations()
            for _ in 0..<100 { device.noteClosed() }
            let perCall = Double(vfiokit_thread_allocations() - before) / 100
            #expect(perCall < 0.5, "noteClosed() allocates \(perCall) times per call")
        }
    }
}
