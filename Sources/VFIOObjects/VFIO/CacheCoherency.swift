import CVFIO
import VFIOSystem

/// Whether the IOMMU enforces cache coherency for a device's DMA: every
/// transaction snooped by the CPU caches, PCIe no-snoop requests included
/// (`VFIO_DMA_CC_IOMMU`, the IOMMU's "force snoop" / "force coherent").
///
/// It matters to a VMM: when it is not enforced, a device can write memory
/// behind the CPU caches, and a guest that flushes with `wbinvd` must really
/// flush (KVM then emulates `wbinvd` instead of ignoring it). It is the
/// kernel's and the hardware's decision, with security weight (a device that
/// bypasses caches can read stale data a guest believed flushed): VFIOKit
/// reports it and never changes it. iommufd enforces it wherever the IOMMU
/// can (`iommufd_hwpt_paging_alloc` → `enforce_cache_coherency`); VT-d can when
/// ECAP.SC (snoop control) is set, AMD-Vi always does (the page-table FC bit),
/// virtio-iommu cannot.
///
/// JSON keys: `enforced` (true, false, or null when unknown), `query` (the
/// call that answered), `meaning` (one sentence).
public struct CacheCoherency: Sendable, Equatable, Codable {
    /// Whether the IOMMU blocks no-snoop DMA (`VFIO_DMA_CC_IOMMU`); nil: unknown.
    public var enforced: Bool?
    /// How it was asked (the node and check used), for reports.
    public var query: String
    /// What it means for a VM, in words.
    public var meaning: String

    /// An answer, with its meaning filled in.
    public init(enforced: Bool?, query: String) {
        self.enforced = enforced
        self.query = query
        switch enforced {
        case true?:
            meaning = "the IOMMU blocks no-snoop DMA: every DMA is cache-coherent, a VM needs no wbinvd emulation"
        case false?:
            meaning = "the IOMMU does not block no-snoop DMA: the device may bypass the CPU caches, so a VM must "
                + "emulate wbinvd (KVM does when told); reported, never changed by VFIOKit"
        case nil:
            meaning = "unknown"
        }
    }

    /// No answer, and why.
    public static func unknown(_ why: String) -> CacheCoherency {
        var c = CacheCoherency(enforced: nil, query: "none")
        c.meaning = "unknown: " + why
        return c
    }

    enum CodingKeys: String, CodingKey { case enforced, query, meaning }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(enforced, forKey: .enforced)
        try c.encode(query, forKey: .query)
        try c.encode(meaning, forKey: .meaning)
    }

    /// `enforced (the IOMMU blocks no-snoop DMA ...)`, for text reports.
    public var text: String {
        (enforced.map { $0 ? "enforced" : "NOT enforced" } ?? "unknown") + ": " + meaning
            + (enforced == nil ? "" : " [\(query)]")
    }
}

extension VFIOContainer {
    /// Whether every IOMMU domain of this container enforces cache coherency.
    /// The container needs its groups and its IOMMU type (``setIOMMU(_:)``):
    /// type1 answers for the domains its groups are attached to
    /// (`vfio_domains_have_enforce_cache_coherency`); iommufd's compat container
    /// for the HWPTs of its IOAS. The corresponding ioctl is
    /// `VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU)`.
    public func cacheCoherency() throws(VFIOError) -> CacheCoherency {
        guard type != nil else {
            throw .invalid(.ioctl(.vfioCheckExtension), "VFIO_DMA_CC_IOMMU describes the container's IOMMU domains, and it has none yet",
                           object: label, remedies: [.advice("add a group (setContainer) and set the IOMMU type (setIOMMU) first")])
        }
        let on = try checkExtension(VFIO_DMA_CC_IOMMU)
        return CacheCoherency(enforced: on, query: "VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) on \(backend.rawValue)")
    }
}

extension IOAS {
    /// Whether every paging HWPT on this IOAS enforces cache coherency.
    ///
    /// iommufd has no ioctl of its own for this; what it exposes is its VFIO
    /// compatibility layer: `VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU)` on the
    /// iommufd answers for the compat IOAS from `enforce_cache_coherency` of
    /// every paging HWPT on it (drivers/iommu/iommufd/vfio_compat.c,
    /// `iommufd_vfio_cc_iommu`) — the same flag the kernel set when it
    /// allocated the domain for the device. So this makes this IOAS the compat
    /// IOAS for the one check (`IOMMU_VFIO_IOAS` SET, then CLEAR) when none is
    /// set, asks, and puts it back; it refuses when another IOAS is the compat
    /// IOAS (another user of a shared iommufd).
    ///
    /// Meaningful only once a device is attached (to this IOAS or a HWPT on
    /// it): with no HWPT the kernel answers "enforced" for nothing.
    public func cacheCoherency() throws(VFIOError) -> CacheCoherency {
        let current = try iommufd.compatibilityIOASID()
        if let current, current != objectID {
            throw .invalid(.ioctl(.vfioCheckExtension), "IOAS \(current) is this iommufd's VFIO compatibility IOAS, and "
                           + "VFIO_DMA_CC_IOMMU answers only for that one", object: label,
                           remedies: [.advice("ask on the compat IOAS, or on an iommufd whose compat IOAS is unset")])
        }
        if current == nil { try iommufd.setCompatibilityIOAS(self) }
        let answer: Result<Int32, VFIOError> = Result { () throws(VFIOError) -> Int32 in
            try iommufd.fd.ioctl(.vfioCheckExtension, value: Int(VFIO_DMA_CC_IOMMU),
                                 object: "\(label) (as the VFIO compatibility IOAS)")
        }
        if current == nil { try iommufd.clearCompatibilityIOAS() }
        let on = try answer.get() > 0
        return CacheCoherency(enforced: on, query: "VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) on /dev/iommu with \(label) as its "
                              + "compat IOAS (IOMMU_VFIO_IOAS)")
    }
}
