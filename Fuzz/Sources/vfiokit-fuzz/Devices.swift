// Targets for what devices and IOMMUs report: PCI config space and IOMMU hardware info.
import CVFIO
@testable import VFIOCommands
import VFIOKit
import VFIOKitTestSupport
import VFIOObjects
import VFIOSystem

/// A device whose config region (its size and fd offset from the input) holds the
/// input's bytes; walks both capability lists and checks what they return.
@Sendable func fuzzConfigCaps(_ bytes: [UInt8]) {
    var r = FuzzReader(bytes)
    let sizes: [UInt64] = [0x40, 0x100, 0x1000, 0x1000, 0x1000]
    let sizePick = r.u8()
    let size = sizePick < 250 ? sizes[Int(sizePick) % sizes.count] : UInt64(r.u16())
    let regionOffset: UInt64 = r.u8() < 250 ? UInt64(VFIO_PCI_CONFIG_REGION_INDEX) << 40 : r.u64()
    let space = r.remaining
    let kernel = FakeKernel()
    kernel.files["/dev/vfio/devices/vfio0"] = .node
    kernel.onIoctl(VFIO_DEVICE_GET_REGION_INFO) { _, arg in
        guard let h = arg?.assumingMemoryBound(to: vfio_region_info.self) else { return -EFAULT }
        h.pointee.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
        h.pointee.size = size
        h.pointee.offset = regionOffset
        h.pointee.cap_offset = 0
        return 0
    }
    // Reads past the input see 0xff (no device there), as reads of absent functions do.
    kernel.onFileIO { _, offset, buffer, isWrite in
        if isWrite { return buffer.count }
        let base = Int64(bitPattern: regionOffset)
        for i in 0..<buffer.count {
            let at = offset &- base &+ Int64(i)
            buffer[i] = at >= 0 && at < Int64(space.count) ? space[Int(at)] : 0xff
        }
        return buffer.count
    }
    try? Syscalls.withProvider(kernel) {
        let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
        let cfg = try device.configSpace()
        if let caps = try? cfg.capabilities() {
            fuzzCheck(caps.count <= 48, "\(caps.count) standard capabilities")
            for c in caps { fuzzCheck(c.offset >= 0x40 && c.offset <= 0xfc && c.offset % 4 == 0, "capability at 0x\(String(c.offset, radix: 16))") }
        }
        if let ext = try? cfg.extendedCapabilities() {
            fuzzCheck(ext.count <= 96, "\(ext.count) extended capabilities")
            for c in ext { fuzzCheck(c.offset >= 0x100 && c.offset % 4 == 0 && UInt64(c.offset) < size, "extended capability at 0x\(String(c.offset, radix: 16))") }
        }
        _ = try? cfg.find(.msix)
        _ = try? cfg.command()
    }
}

/// IOMMU_GET_HW_INFO answers of every known type (and unknown ones), decoded, then
/// rendered as `vfioctl hwinfo` prints them (text and JSON).
@Sendable func fuzzHardwareInfo(_ bytes: [UInt8]) {
    var r = FuzzReader(bytes)
    let types: [UInt32] = [
        UInt32(IOMMU_HW_INFO_TYPE_NONE.rawValue), UInt32(IOMMU_HW_INFO_TYPE_INTEL_VTD.rawValue),
        UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3.rawValue), UInt32(IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV.rawValue),
        UInt32(IOMMU_HW_INFO_TYPE_AMD.rawValue), IOMMUHardwareInfo.selftestType,
    ]
    let pick = r.u8()
    let type = Int(pick) < types.count * 40 ? types[Int(pick) % types.count] : r.u32()
    let caps = r.u64()
    let pasid = r.u8()
    let info = IOMMUHardwareInfo(dataType: type, data: r.remaining, capabilities: caps, maxPASIDLog2: pasid)
    fuzzCheck(info.dataType == type, "the data type changed")
    let report = HWInfoReport(info)
    let lines = report.textLines()
    fuzzCheck(!lines.isEmpty, "no report lines")
    _ = JSON.render(report)
    if case .intelVTd(let v) = info.vendor {
        _ = (v.domainCount, v.maxGuestAddressWidth, v.faultRecordingOffset, v.faultRecordingRegisters, v.pasidBits)
    }
}
