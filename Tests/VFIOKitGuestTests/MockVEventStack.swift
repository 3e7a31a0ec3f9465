import VFIOKit
import VFIOObjects
import VFIOKitTestSupport

/// A mock device behind a vIOMMU that reports events: a nest-parent HWPT over
/// the device's IOAS, a vIOMMU on it, its vEVENTQ, the device's vDEVICE and a
/// nested HWPT of the vIOMMU with the device moved onto it (a nested domain of
/// a vIOMMU takes the device only once its vDEVICE exists).
struct MockVEventStack {
    let ioas: IOAS
    let dev: MockDevice
    let parent: HWPT
    let viommu: VIOMMU
    let queue: VEventQueue
    let vdev: VDevice
    let nested: HWPT

    init(_ ioas: IOAS, _ dev: MockDevice, depth: UInt32, virtualID: UInt64) throws(VFIOError) {
        self.ioas = ioas
        self.dev = dev
        parent = try HWPT(ioas: ioas, device: dev.deviceID, flags: .nestParent)
        viommu = try VIOMMU(device: dev.deviceID, parent: parent, type: MockIOMMU.viommuType)
        queue = try VEventQueue(viommu: viommu, type: MockIOMMU.veventqType, depth: depth, eventSize: 4)
        vdev = try VDevice(viommu: viommu, device: dev.deviceID, virtualID: virtualID)
        nested = try HWPT(nestedOn: viommu, device: dev.deviceID, data: IOMMUFDMockTests.HardwarePageTables.selftestData())
        try dev.replace(with: nested)
    }

    /// Takes the stack down in the order the kernel needs: the device back to
    /// the IOAS (off the nested HWPT), then each object before the one it
    /// holds: the vDEVICE and the queue before their vIOMMU, the nested HWPT
    /// before the vIOMMU, the vIOMMU before its parent.
    func tearDown() throws(VFIOError) {
        try dev.replace(with: ioas)
        try vdev.destroy()
        try queue.destroy()
        try nested.destroy()
        try viommu.destroy()
        try parent.destroy()
    }
}
