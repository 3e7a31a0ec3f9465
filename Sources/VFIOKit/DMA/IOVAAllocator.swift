/// Hands out IOVA ranges inside the usable ranges an IOMMU reports, at a
/// minimum alignment (the IOMMU page size), below a device's DMA mask.
///
/// First fit over a sorted list of allocations. Freed ranges are reused.
public struct IOVAAllocator: Sendable {
    /// Usable IOVA ranges (inclusive ends), as the kernel reports them.
    public private(set) var ranges: [ClosedRange<UInt64>]
    /// Every allocation starts at a multiple of this (a power of two).
    public var alignment: UInt64
    /// The highest IOVA the device can address (edu: 2^28 - 1).
    public var dmaMask: UInt64
    /// Allocated (start, length), sorted by start.
    private(set) var allocations: [(start: UInt64, length: UInt64)] = []

    public init(ranges: [ClosedRange<UInt64>] = [0...UInt64.max], alignment: UInt64 = 4096, dmaMask: UInt64 = .max) {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        self.ranges = ranges.sorted { $0.lowerBound < $1.lowerBound }
        self.alignment = alignment
        self.dmaMask = dmaMask
        allocations.reserveCapacity(64)
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
    /// nil when no usable range has room.
    public mutating func allocate(length: UInt64, align: UInt64 = 0) -> UInt64? {
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
                while i < allocations.count && allocations[i].start &+ allocations[i].length <= c { i += 1 }
                if i < allocations.count && allocations[i].start <= last {
                    candidate = allocations[i].start &+ allocations[i].length
                    continue
                }
                insert(c, length)
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
        for x in allocations where x.start <= last && start <= x.start &+ x.length &- 1 { return false }
        insert(start, length)
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

    /// Bytes allocated now.
    public var allocatedBytes: UInt64 { allocations.reduce(0) { $0 + $1.length } }

    private mutating func insert(_ start: UInt64, _ length: UInt64) {
        let i = allocations.firstIndex(where: { $0.start > start }) ?? allocations.count
        allocations.insert((start, length), at: i)
    }
}
