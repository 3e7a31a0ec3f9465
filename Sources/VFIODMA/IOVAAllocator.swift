import VFIOSystem

/// Hands out IOVA ranges inside the usable ranges an IOMMU reports, at a
/// minimum alignment (the IOMMU page size), below a device's DMA mask.
///
/// First fit over a sorted list of allocations. Freed ranges are reused.
/// Every range may reach the top of the 64-bit IOVA space: ends are kept
/// inclusive (the last byte), so an allocation that ends at 2^64 is as good as
/// any other, and no arithmetic wraps.
public struct IOVAAllocator: Sendable {
    /// Usable IOVA ranges (inclusive ends), as the kernel reports them.
    public private(set) var ranges: [ClosedRange<UInt64>]
    /// Every allocation starts at a multiple of this (a power of two); see ``setAlignment(_:)``.
    public private(set) var alignment: UInt64
    /// The highest IOVA the device can address (edu: 2^28 - 1).
    public var dmaMask: UInt64
    /// Allocated (start, last byte), sorted by start.
    private(set) var allocations: [(start: UInt64, last: UInt64)] = []

    /// An allocator over `ranges`. Throws when `alignment` is not a power of two.
    public init(ranges: [ClosedRange<UInt64>] = [0...UInt64.max], alignment: UInt64 = 4096, dmaMask: UInt64 = .max)
        throws(VFIOError)
    {
        try IOVAAllocator.checkAlignment(alignment, "alignment")
        self.ranges = ranges.sorted { $0.lowerBound < $1.lowerBound }
        self.alignment = alignment
        self.dmaMask = dmaMask
        allocations.reserveCapacity(64)
    }

    static func checkAlignment(_ a: UInt64, _ what: String) throws(VFIOError) {
        guard a > 0, a & (a - 1) == 0 else {
            throw VFIOError.invalid(.step(.allocateIOVA), "\(what) \(a) is not a power of two",
                                    remedies: [.advice("IOMMU page sizes and IOVA alignments are powers of two, e.g. 4096")])
        }
    }

    /// Sets the minimum alignment (a power of two: the IOMMU page size).
    public mutating func setAlignment(_ a: UInt64) throws(VFIOError) {
        try IOVAAllocator.checkAlignment(a, "alignment")
        alignment = a
    }

    /// Replaces the usable ranges (they shrink as devices attach and their
    /// reserved regions, e.g. the MSI window, are carved out).
    public mutating func updateRanges(_ new: [ClosedRange<UInt64>]) {
        ranges = new.sorted { $0.lowerBound < $1.lowerBound }
    }

    @inline(__always)
    static func alignUp(_ v: UInt64, _ a: UInt64) -> UInt64? {
        let (s, o) = v.addingReportingOverflow(a - 1)
        return o ? nil : s & ~(a - 1)
    }

    /// Finds and records `length` bytes, aligned to `max(alignment, align)`;
    /// nil when no usable range has room. Throws when `align` is neither 0 nor
    /// a power of two.
    public mutating func allocate(length: UInt64, align: UInt64 = 0) throws(VFIOError) -> UInt64? {
        if align != 0 { try IOVAAllocator.checkAlignment(align, "align") }
        guard length > 0 else { return nil }
        let a = max(alignment, align)
        for r in ranges {
            guard r.lowerBound <= dmaMask else { break }
            let hi = min(r.upperBound, dmaMask)
            var candidate = r.lowerBound
            var i = 0
            while true {
                guard let c = IOVAAllocator.alignUp(candidate, a), c <= hi else { break }
                let (last, o) = c.addingReportingOverflow(length - 1)
                if o || last > hi { break }
                // Skip allocations that end before c; check the first one after.
                while i < allocations.count && allocations[i].last < c { i += 1 }
                if i < allocations.count && allocations[i].start <= last {
                    let (next, end) = allocations[i].last.addingReportingOverflow(1)
                    if end { break }  // that allocation reaches 2^64: nothing after it
                    candidate = next
                    continue
                }
                insert(c, last)
                return c
            }
        }
        return nil
    }

    /// Records a caller-chosen range; false when it overlaps an allocation or
    /// lies outside the usable ranges or the DMA mask.
    public mutating func reserve(_ start: UInt64, length: UInt64) -> Bool {
        guard length > 0 else { return false }
        let (last, o) = start.addingReportingOverflow(length - 1)
        guard !o, last <= dmaMask, ranges.contains(where: { $0.lowerBound <= start && last <= $0.upperBound }) else { return false }
        for x in allocations where x.start <= last && start <= x.last { return false }
        insert(start, last)
        return true
    }

    /// Whether a range would be accepted by ``reserve(_:length:)``.
    public func isUsable(_ start: UInt64, length: UInt64) -> Bool {
        var copy = self
        return copy.reserve(start, length: length)
    }

    /// Releases the allocation that starts at `start`.
    public mutating func free(_ start: UInt64) {
        if let i = allocations.firstIndex(where: { $0.start == start }) { allocations.remove(at: i) }
    }

    /// Bytes allocated now; `UInt64.max` when the allocations cover all 2^64
    /// IOVAs (one more than a UInt64 holds).
    public var allocatedBytes: UInt64 {
        var total: UInt64 = 0
        for x in allocations {
            let (sum, o) = total.addingReportingOverflow(x.last - x.start)
            let (next, o2) = sum.addingReportingOverflow(1)
            if o || o2 { return .max }
            total = next
        }
        return total
    }

    private mutating func insert(_ start: UInt64, _ last: UInt64) {
        let i = allocations.firstIndex(where: { $0.start > start }) ?? allocations.count
        allocations.insert((start, last), at: i)
    }
}
