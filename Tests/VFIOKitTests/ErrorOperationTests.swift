import CVFIO
import SystemPackage
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Errors name the request the call site issued, never one looked up from its
/// number: ten request numbers are shared by requests on different kinds of fd.
@Suite struct ErrorOperationTests {
    /// VFIO_IOMMU_MAP_DMA (container fd) and VFIO_DEVICE_PCI_HOT_RESET (device
    /// fd) are both 0x3b71: a failing map must be named as the map.
    @Test func aFailingContainerMapIsNamedAsTheMap() throws {
        #expect(VFIO_IOMMU_MAP_DMA == VFIO_DEVICE_PCI_HOT_RESET)
        let k = FakeKernel()
        k.files["/dev/vfio/vfio"] = .node
        k.onIoctl(VFIO_GET_API_VERSION) { _, _ in 0 }
        k.onIoctl(VFIO_IOMMU_MAP_DMA) { _, _ in -ENOSPC }
        try Syscalls.withProvider(k) {
            let c = try VFIOContainer()
            let buffer = [UInt8](repeating: 0, count: 4096)
            let e = #expect(throws: VFIOError.self) {
                try buffer.withUnsafeBytes { p in try c.unsafeMapDMA(address: p.baseAddress!, length: 4096, at: 0x10_0000) }
            }
            #expect(e?.operation == .ioctl(.vfioIOMMUMapDMA) && e?.errno == .noSpace)
            #expect(e?.description.hasPrefix("VFIO_IOMMU_MAP_DMA on container /dev/vfio/vfio failed: ENOSPC") == true,
                    "\(String(describing: e))")
            // The hint for this request and errno (type1's mapping count limit) now fires.
            #expect(e?.description.contains("dma_entry_limit") == true, "\(String(describing: e))")
            try c.close()
        }
        #expect(k.openFDCount == 0)
    }

    /// VFIO_DEVICE_FEATURE answers ENOTTY for a feature id the device's driver
    /// does not handle (drivers/vfio/vfio_main.c, vfio_ioctl_device_feature):
    /// on a kernel that has the request (5.7 and later) that is the device's
    /// answer, not a missing ioctl.
    @Test func enottyFromDeviceFeatureMeansTheDeviceLacksTheFeature() throws {
        try withCdevDevice(failing: VFIO_DEVICE_FEATURE, with: ENOTTY) { device in
            let e = #expect(throws: VFIOError.self) { _ = try device.setMigrationState(.stop) }
            #expect(e?.operation == .ioctl(.vfioDeviceFeature) && e?.errno == .inappropriateIOCTLForDevice)
            #expect(e?.remedies.contains { $0.kind == .newerKernel } == false, "\(String(describing: e))")
            let text = e?.description ?? ""
            #expect(!text.contains("this kernel lacks"), "\(text)")
            // setMigrationState reads the flags first: the answer is the feature GET's.
            #expect(text.contains("does not support") || text.contains("not supported by this device"), "\(text)")
        }
    }
}
