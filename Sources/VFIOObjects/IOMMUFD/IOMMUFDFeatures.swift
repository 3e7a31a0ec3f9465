import CVFIO
import VFIOSystem

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
    /// Every iommufd request of Linux 7.2, in command order (from the one table, ``Request/all``).
    public static var requests: [Request] { Request.iommufd }

    /// The requests the kernel knows.
    public var supportedRequests: Set<Request>
    /// The requests it answered ENOTTY to, in command order.
    public var missingRequests: [Request] {
        IOMMUFDFeatures.requests.filter { !supportedRequests.contains($0) }
    }
    /// `IOMMU_IOAS_MAP` flags the kernel accepts (FIXED_IOVA, WRITEABLE, READABLE).
    public var ioasMapFlags: UInt32
    /// Whether `IOMMU_OPTION_HUGE_PAGES` exists (per-IOAS option).
    public var hugePagesOption: Bool
    /// The running kernel (`uname -r`).
    public var kernelRelease: String

    /// Whether the running kernel has `request` (probed on /dev/iommu).
    public func supports(_ request: Request) -> Bool { supportedRequests.contains(request) }

    /// Throws a VFIOError naming the release that added `request` when the kernel lacks it.
    public func require(_ request: Request) throws(VFIOError) {
        guard !supports(request) else { return }
        throw VFIOError(operation: .ioctl(request), errno: .inappropriateIOCTLForDevice, object: "/dev/iommu",
                        detail: "this kernel (\(kernelRelease)) lacks \(request.name), added in Linux \(request.introduced)",
                        remedies: [.newerKernel(lacking: [request], running: kernelRelease)])
    }

    public var description: String {
        var lines = ["iommufd on Linux \(kernelRelease):"]
        for r in IOMMUFDFeatures.requests {
            lines.append("  \(supports(r) ? "yes" : "no ") \(r.name) (since \(r.introduced))")
        }
        return lines.joined(separator: "\n")
    }
}

import SystemPackage

extension IOMMUFD {
    /// Asks the kernel which iommufd requests and flags it supports. Side-effect free.
    public func features() throws(VFIOError) -> IOMMUFDFeatures {
        var supported = Set<Request>()
        for (request, present) in try fd.probe(IOMMUFDFeatures.requests) where present { supported.insert(request) }
        // Map flags on IOAS 0: ENOENT = flags known, EOPNOTSUPP = unknown.
        var flags: UInt32 = 0
        for f in [IOMMU_IOAS_MAP_FIXED_IOVA.rawValue, IOMMU_IOAS_MAP_WRITEABLE.rawValue, IOMMU_IOAS_MAP_READABLE.rawValue] {
            var arg = iommu_ioas_map.make()
            arg.flags = UInt32(f) | UInt32(IOMMU_IOAS_MAP_READABLE.rawValue)
            arg.ioas_id = 0
            arg.length = 4096
            arg.user_va = 4096
            let r = try withUnsafeMutableBytes(of: &arg) { (p) throws(VFIOError) in try fd.probeIoctl(.iommuIOASMap, p.baseAddress) }
            if r != -EOPNOTSUPP && r != -ENOTTY { flags |= UInt32(f) }
        }
        var opt = iommu_option.make()
        opt.option_id = UInt32(IOMMU_OPTION_HUGE_PAGES.rawValue)
        opt.op = UInt16(IOMMU_OPTION_OP_GET.rawValue)
        opt.object_id = 0
        let hp = try withUnsafeMutableBytes(of: &opt) { (p) throws(VFIOError) in try fd.probeIoctl(.iommuOption, p.baseAddress) }
        return IOMMUFDFeatures(supportedRequests: supported, ioasMapFlags: flags,
                               hugePagesOption: hp == -ENOENT || hp == 0,
                               kernelRelease: KernelVersion.runningRelease)
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
            } catch where error.errno == .notSupported || error.errno == .invalidArgument {
                continue
            }
        }
        try scratch.destroy()
        return ok
    }
}
