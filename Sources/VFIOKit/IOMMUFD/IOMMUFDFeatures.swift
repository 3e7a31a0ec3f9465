import CVFIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the running kernel's iommufd supports, found by asking it.
///
/// Requests are probed with an argument whose `size` is 0: a kernel that knows
/// the request rejects it with EINVAL (too short) before doing anything; one
/// that does not answers ENOTTY. Flags are probed on object id 0, which is
/// never valid: a known flag gets ENOENT (no such object), an unknown one
/// EOPNOTSUPP. Nothing is created or changed.
public struct IOMMUFDFeatures: Sendable, Equatable, CustomStringConvertible {
    /// Every iommufd request of Linux 7.2, in command order.
    public static let requests: [(name: String, request: UInt)] = [
        ("IOMMU_DESTROY", IOMMU_DESTROY), ("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC),
        ("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS), ("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY),
        ("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES), ("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP),
        ("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP), ("IOMMU_OPTION", IOMMU_OPTION),
        ("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS), ("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC),
        ("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO), ("IOMMU_HWPT_SET_DIRTY_TRACKING", IOMMU_HWPT_SET_DIRTY_TRACKING),
        ("IOMMU_HWPT_GET_DIRTY_BITMAP", IOMMU_HWPT_GET_DIRTY_BITMAP), ("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE),
        ("IOMMU_FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC), ("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE),
        ("IOMMU_VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC), ("IOMMU_VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC),
        ("IOMMU_IOAS_CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS), ("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC),
        ("IOMMU_HW_QUEUE_ALLOC", IOMMU_HW_QUEUE_ALLOC),
    ]

    /// Request names the kernel knows.
    public var supportedRequests: Set<String>
    /// Request names it answered ENOTTY to.
    public var missingRequests: [String] {
        IOMMUFDFeatures.requests.map(\.name).filter { !supportedRequests.contains($0) }
    }
    /// `IOMMU_IOAS_MAP` flags the kernel accepts (FIXED_IOVA, WRITEABLE, READABLE).
    public var ioasMapFlags: UInt32
    /// Whether `IOMMU_OPTION_HUGE_PAGES` exists (per-IOAS option).
    public var hugePagesOption: Bool
    /// The running kernel (`uname -r`).
    public var kernelRelease: String

    public func supports(_ requestName: String) -> Bool { supportedRequests.contains(requestName) }

    /// Throws a VFIOError naming the release that added `requestName` when the kernel lacks it.
    public func require(_ requestName: String) throws(VFIOError) {
        guard !supports(requestName) else { return }
        let since = KernelFeatures.introduced[requestName].map { "Linux \($0)" } ?? "a newer kernel"
        throw VFIOError(operation: requestName, errno: Errno(rawValue: ENOTTY), object: "/dev/iommu",
                        detail: "this kernel (\(kernelRelease)) lacks \(requestName), added in \(since)")
    }

    public var description: String {
        var lines = ["iommufd on Linux \(kernelRelease):"]
        for (name, _) in IOMMUFDFeatures.requests {
            let since = KernelFeatures.introduced[name].map { " (since \($0))" } ?? ""
            lines.append("  \(supports(name) ? "yes" : "no ") \(name)\(since)")
        }
        return lines.joined(separator: "\n")
    }
}

import SystemPackage

extension IOMMUFD {
    /// Asks the kernel which iommufd requests and flags it supports. Side-effect free.
    public func features() throws(VFIOError) -> IOMMUFDFeatures {
        var supported = Set<String>()
        for (name, request) in IOMMUFDFeatures.requests {
            // Large enough for any iommufd argument; size 0 is always "too short".
            var zero = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
            let r = try withUnsafeMutableBytes(of: &zero) { (p) throws(VFIOError) in try fd.probeIoctl(request, p.baseAddress) }
            if r != -ENOTTY { supported.insert(name) }
        }
        // Map flags on IOAS 0: ENOENT = flags known, EOPNOTSUPP = unknown.
        var flags: UInt32 = 0
        for f in [IOMMU_IOAS_MAP_FIXED_IOVA.rawValue, IOMMU_IOAS_MAP_WRITEABLE.rawValue, IOMMU_IOAS_MAP_READABLE.rawValue] {
            var arg = iommu_ioas_map.make()
            arg.flags = UInt32(f) | UInt32(IOMMU_IOAS_MAP_READABLE.rawValue)
            arg.ioas_id = 0
            arg.length = 4096
            arg.user_va = 4096
            let r = try withUnsafeMutableBytes(of: &arg) { (p) throws(VFIOError) in try fd.probeIoctl(IOMMU_IOAS_MAP, p.baseAddress) }
            if r != -EOPNOTSUPP && r != -ENOTTY { flags |= UInt32(f) }
        }
        var opt = iommu_option.make()
        opt.option_id = UInt32(IOMMU_OPTION_HUGE_PAGES.rawValue)
        opt.op = UInt16(IOMMU_OPTION_OP_GET.rawValue)
        opt.object_id = 0
        let hp = try withUnsafeMutableBytes(of: &opt) { (p) throws(VFIOError) in try fd.probeIoctl(IOMMU_OPTION, p.baseAddress) }
        return IOMMUFDFeatures(supportedRequests: supported, ioasMapFlags: flags,
                               hugePagesOption: hp == -ENOENT || hp == 0,
                               kernelRelease: KernelFeatures.runningRelease)
    }
}

extension IOMMUFD {
    /// Which `IOMMU_HWPT_ALLOC` flags device `deviceID`'s IOMMU accepts, found
    /// by allocating (and at once destroying) a paging HWPT per flag on a
    /// scratch IOAS. An unknown or unsupported flag answers EOPNOTSUPP.
    /// The corresponding ioctl is `IOMMU_HWPT_ALLOC`.
    public func supportedHWPTFlags(device deviceID: UInt32) throws(VFIOError) -> HWPT.Flags {
        let scratch = try IOAS(self)
        var ok: HWPT.Flags = []
        for flag in [HWPT.Flags.nestParent, .dirtyTracking, .pasid] {
            do {
                let h = try HWPT(ioas: scratch, device: deviceID, flags: flag)
                try h.destroy()
                ok.insert(flag)
            } catch where error.errno?.rawValue == EOPNOTSUPP || error.errno?.rawValue == EINVAL {
                continue
            }
        }
        try scratch.destroy()
        return ok
    }
}
