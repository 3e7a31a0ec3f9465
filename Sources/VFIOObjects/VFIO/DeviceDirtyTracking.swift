import CVFIO
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

enum DMALogging {
    /// The largest bitmap one report allocates: 1 GiB (2^33 pages, 32 TiB of 4 KiB pages).
    static let maxReportWords: UInt64 = 1 << 27
}

extension VFIODevice {
    /// Starts device-side dirty tracking of DMA writes over `ranges` (IOVA, length)
    /// at `pageSize` granularity (devices with migration support only).
    /// The corresponding ioctl is `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`.
    public func startDMALogging(pageSize: UInt64, ranges: [(iova: UInt64, length: UInt64)]) throws(VFIOError) {
        var list = ranges.map { vfio_device_feature_dma_logging_range(iova: $0.iova, length: $0.length) }
        // Safety: the control structure carries the ranges' address, valid only inside this closure;
        // the ioctl that reads it runs inside it too.
        let result: Result<Void, VFIOError> = list.withUnsafeMutableBufferPointer { p in
            var control = vfio_device_feature_dma_logging_control()
            control.page_size = pageSize
            control.num_ranges = UInt32(p.count)
            control.ranges = UInt64(UInt(bitPattern: p.baseAddress))
            let payload = withUnsafeBytes(of: control) { Array($0) }
            return Result { () throws(VFIOError) in
                try setFeature(VFIO_DEVICE_FEATURE_DMA_LOGGING_START, payload: payload)
            }
        }
        try result.get()
    }

    /// Stops dirty tracking. `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`.
    public func stopDMALogging() throws(VFIOError) {
        try setFeature(VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, payload: [])
    }

    /// The pages of `[iova, iova+length)` the device wrote since the last
    /// report (and clears them): one bit per `pageSize` page, in 64-bit words.
    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`.
    public func dmaLoggingReport(iova: UInt64, length: UInt64, pageSize: UInt64) throws(VFIOError) -> [UInt64] {
        // The kernel's own checks (vfio_ioctl_device_feature_logging_report), before any arithmetic here.
        guard pageSize >= 4096, pageSize & (pageSize - 1) == 0, length > 0 else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "DMA logging report: page size \(pageSize) must be a power of "
                                        + "two of at least 4096, and length \(length) positive", object: label)
        }
        guard !iova.addingReportingOverflow(length).overflow else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "DMA logging report: IOVA 0x\(String(iova, radix: 16)) + "
                                        + "length \(length) runs past 2^64", object: label)
        }
        let pages = length / pageSize + (length % pageSize == 0 ? 0 : 1)
        let words = (pages + 63) / 64
        guard words <= DMALogging.maxReportWords else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "DMA logging report: \(pages) pages need a \(words * 8)-byte "
                                        + "bitmap, more than the \(DMALogging.maxReportWords * 8) bytes one report may use",
                                    object: label, remedies: [.advice("report the range in parts")])
        }
        var bitmap = [UInt64](repeating: 0, count: Int(words))
        let result = bitmap.withUnsafeMutableBufferPointer { p in
            var report = vfio_device_feature_dma_logging_report()
            report.iova = iova
            report.length = length
            report.page_size = pageSize
            // Safety: the kernel writes the bitmap during the ioctl, which runs inside this closure.
            report.bitmap = UInt64(UInt(bitPattern: p.baseAddress))
            let payload = withUnsafeBytes(of: report) { Array($0) }
            return Result { () throws(VFIOError) in
                _ = try runFeature(flags: VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT | VFIO_DEVICE_FEATURE_GET,
                                   payload: payload, object: "get")
            }
        }
        try result.get()
        return bitmap
    }

    /// Exports `ranges` (offset, length) of a BAR as a dma-buf, for peer-to-peer
    /// DMA by another device or an importer such as `IOMMU_IOAS_MAP_FILE`.
    /// The corresponding ioctl is `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_DMA_BUF`.
    public func exportDMABuf(region: UInt32, ranges: [(offset: UInt64, length: UInt64)]) throws(VFIOError) -> OwnedFD {
        guard !ranges.isEmpty else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "a dma-buf needs at least one range", object: label)
        }
        var payload = [UInt8]()
        var header = vfio_device_feature_dma_buf()
        header.region_index = region
        header.open_flags = UInt32(O_RDWR | O_CLOEXEC)
        header.nr_ranges = UInt32(ranges.count)
        withUnsafeBytes(of: header) { payload.append(contentsOf: $0) }
        for r in ranges {
            withUnsafeBytes(of: vfio_region_dma_range(offset: r.offset, length: r.length)) { payload.append(contentsOf: $0) }
        }
        let fd = try notSupportedByDevice { () throws(VFIOError) in
            try featureReturningValue(flags: VFIO_DEVICE_FEATURE_DMA_BUF | VFIO_DEVICE_FEATURE_GET, payload: payload)
        }
        return OwnedFD(fd, label: "dma-buf of \(label) region \(region)", kernel: self.fd.kernel)
    }
}
