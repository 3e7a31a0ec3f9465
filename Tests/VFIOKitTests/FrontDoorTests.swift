import CVFIO
import Testing
import VFIOKit
import VFIOKitTestSupport
import VFIOSystem

/// Which DMA modes the kernel offers, before any device is bound (the NVMe
/// driver's friction item 7: native iommufd looked unavailable until the
/// first cdev appeared under /dev/vfio/devices).
@Suite struct DMAModeAvailabilityTests {
    static let procDevices = "Character devices:\n  1 mem\n  4 tty\n 10 misc\n236 vfio-dev\n237 vfio\n\nBlock devices:\n259 blkext\n"

    @Test func nativeIOMMUFDIsOfferedBeforeAnyDeviceIsBound() {
        let k = FakeKernel()
        k.files["/dev/iommu"] = .node
        k.files["/proc/devices"] = .contents(Array(Self.procDevices.utf8))
        // No /dev/vfio/devices: devtmpfs makes it with the first cdev.
        let modes = Syscalls.withProvider(k) { DMAMode.available() }
        #expect(modes.contains(.iommufd), "modes: \(modes)")
        #expect(Syscalls.withProvider(k) { DMAMode.best() } == .iommufd)
    }

    @Test func nativeIOMMUFDNeedsTheKernelsCdevSupport() {
        let k = FakeKernel()
        k.files["/dev/iommu"] = .node
        // A kernel without CONFIG_VFIO_DEVICE_CDEV registers no "vfio-dev" character devices.
        k.files["/proc/devices"] = .contents(Array("Character devices:\n  1 mem\n237 vfio\n".utf8))
        #expect(!Syscalls.withProvider(k) { DMAMode.available() }.contains(.iommufd))
        let none = FakeKernel()
        none.files["/proc/devices"] = .contents(Array(Self.procDevices.utf8))
        #expect(!Syscalls.withProvider(none) { DMAMode.available() }.contains(.iommufd), "no /dev/iommu")
    }
}
