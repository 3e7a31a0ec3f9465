// Targets for what the kernel writes back into VFIO and iommufd ioctl buffers.
import CVFIO
import Synchronization
@testable import VFIOObjects
import VFIOSystem
import VFIOKitTestSupport

/// A kernel buffer holding exactly `bytes` (at least the header, zero-padded).
func kernelBytes<H>(_ bytes: [UInt8], as: H.Type) -> KernelBytes<H> {
    var padded = bytes
    if padded.count < MemoryLayout<H>.size { padded += [UInt8](repeating: 0, count: MemoryLayout<H>.size - padded.count) }
    // Safety: `padded` holds at least MemoryLayout<H>.size bytes; H is a plain C struct (any bit pattern is valid).
    let header = padded.withUnsafeBytes { $0.loadUnaligned(as: H.self) }
    var kb = KernelBytes(header, count: padded.count)
    kb.withUnsafeBytesForTest { raw in
        for i in 0..<padded.count { raw[i] = padded[i] }
    }
    return kb
}

/// Every capability a chain walk returns starts inside the buffer, and the walk is loop-free.
func checkChain(_ caps: [VFIOCapability], count: Int) {
    var seen = Set<Int>()
    for c in caps {
        fuzzCheck(c.offset > 0 && c.offset + MemoryLayout<vfio_info_cap_header>.size <= count,
                  "capability at \(c.offset) outside a \(count)-byte buffer")
        fuzzCheck(seen.insert(c.offset).inserted, "capability offset \(c.offset) visited twice")
    }
}

@Sendable func fuzzRegionInfo(_ bytes: [UInt8]) {
    let kb = kernelBytes(bytes, as: vfio_region_info.self)
    let info = VFIORegionInfo(parsing: kb)
    checkChain(info.capabilities, count: kb.count)
    if let areas = info.sparseAreas {
        fuzzCheck(areas.count * MemoryLayout<vfio_region_sparse_mmap_area>.stride <= kb.count, "more sparse areas than bytes")
    }
    _ = info.isReadable; _ = info.isWritable
}

@Sendable func fuzzType1Info(_ bytes: [UInt8]) {
    let kb = kernelBytes(bytes, as: vfio_iommu_type1_info.self)
    let info = VFIOContainer.Info(parsing: kb)
    checkChain(info.capabilities, count: kb.count)
    for r in info.iovaRanges ?? [] { fuzzCheck(r.lowerBound <= r.upperBound, "an inverted IOVA range") }
}

@Sendable func fuzzHotResetInfo(_ bytes: [UInt8]) {
    let kb = kernelBytes(bytes, as: vfio_pci_hot_reset_info.self)
    let info = HotResetInfo(parsing: kb)
    fuzzCheck(info.devices.count * MemoryLayout<vfio_pci_dependent_device>.stride <= kb.count, "more devices than bytes")
}

@Sendable func fuzzVEvents(_ bytes: [UInt8]) {
    var r = FuzzReader(bytes)
    let eventSize = Int(r.u8() % 65)
    var last = Int64(Int32(bitPattern: r.u32()))
    let body = r.remaining
    let records = body.withUnsafeBytes { VEventQueue.parse($0, eventSize: eventSize, lastSequence: &last) }
    var total = 0
    for rec in records {
        if case .event(_, let data) = rec { fuzzCheck(data.count == eventSize, "an event of \(data.count) bytes, not \(eventSize)"); total += data.count }
    }
    fuzzCheck(total <= body.count, "events hold more bytes than were read")
}

/// The answers of a fake kernel for one device, taken from the fuzz input: a device
/// info buffer and a region info buffer (each with the argsz the kernel asks for,
/// bounded as the kernel's own are), and the region's contents for reads.
@Sendable func fuzzDeviceInfo(_ bytes: [UInt8]) {
    var r = FuzzReader(bytes)
    let split = Int(r.u16()) % max(1, bytes.count)
    let rest = r.remaining
    let deviceAnswer = Array(rest.prefix(split))
    let regionAnswer = Array(rest.dropFirst(split))
    let kernel = FakeKernel()
    kernel.files["/dev/vfio/devices/vfio0"] = .node
    // The kernel fills at most argsz bytes and, when the chain does not fit, says how much it needs.
    func answer(_ answer: [UInt8], headerSize: Int) -> FakeKernel.IoctlHandler {
        { _, arg in
            guard let arg else { return -EFAULT }
            let given = Int(arg.load(as: UInt32.self))
            let needed = max(headerSize, min(answer.count, 1 << 16))
            let index = arg.load(fromByteOffset: 12, as: UInt32.self)  // region index, where there is one
            for i in 4..<min(given, needed) where i < answer.count { arg.storeBytes(of: answer[i], toByteOffset: i, as: UInt8.self) }
            if headerSize == MemoryLayout<vfio_region_info>.size { arg.storeBytes(of: index, toByteOffset: 12, as: UInt32.self) }
            arg.storeBytes(of: UInt32(needed), as: UInt32.self)
            return 0
        }
    }
    kernel.onIoctl(VFIO_DEVICE_GET_INFO, answer(deviceAnswer, headerSize: MemoryLayout<vfio_device_info>.size))
    kernel.onIoctl(VFIO_DEVICE_GET_REGION_INFO, answer(regionAnswer, headerSize: MemoryLayout<vfio_region_info>.size))
    kernel.onFileIO { _, _, buffer, isWrite in
        if !isWrite { for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: i) } }
        return buffer.count
    }
    try? Syscalls.withProvider(kernel) { () throws(VFIOError) in
        let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
        if let info = try? device.info() { checkChain(info.capabilities, count: 1 << 16) }
        if let region = try? device.regionInfo(PCIRegion.config) {
            // Reads at the region's edges: in range they work, past the end they throw.
            for offset in [0, region.size &- 4, region.size, region.size &+ 4, UInt64.max &- 2] {
                _ = try? device.read(UInt32.self, region: region, at: offset)
            }
        }
    }
}
