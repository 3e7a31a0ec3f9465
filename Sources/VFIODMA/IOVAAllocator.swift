import VFIOSystem

/// Hands out IOVA ranges inside the usable ranges an IOMMU reports, at a
/// minimum alignment (the IOMMU page size), below a device's DMA mask.
///
/// First fit: the lowest address that fits. The free space is kept as an
/// index of gaps (`GapIndex`: ordered by address, each subtree knowing its
/// widest gap), so allocate descends to the lowest gap wide enough and
/// reserve finds the gap that holds a range, both in O(log n) for n gaps;
/// free finds its allocation in a hash table (`AllocationTable`, O(1)
/// expected) and joins the freed range
/// with the gaps on either side (O(log n)). A gap never crosses from one
/// usable range into the next, so an allocation lies inside one range.
/// Every range may reach the top of the 64-bit IOVA space: ends are kept
/// inclusive (the last byte), so an allocation that ends at 2^64 is as good as
/// any other, and no arithmetic wraps.
public struct IOVAAllocator: Sendable {
    /// Usable IOVA ranges (inclusive ends), as the kernel reports them.
    public private(set) var ranges: [ClosedRange<IOVA>]
    /// Every allocation starts at a multiple of this (a power of two); see ``setAlignment(_:)``.
    public private(set) var alignment: UInt64
    /// The highest IOVA the device can address (edu: 2^28 - 1).
    public var dmaMask: UInt64
    /// `ranges` sorted, overlapping ones merged (touching ones stay apart).
    private var usable: [ClosedRange<UInt64>] = []
    /// The free space: `usable` minus the allocations.
    private var gaps = GapIndex()
    /// Live allocations: start -> last byte.
    private var live = AllocationTable()

    /// An allocator over `ranges`. Throws when `alignment` is not a power of two.
    public init(ranges: [ClosedRange<IOVA>] = [IOVA.zero...IOVA.max], alignment: UInt64 = 4096, dmaMask: UInt64 = .max)
        throws(VFIOError)
    {
        try IOVAAllocator.checkAlignment(alignment, "alignment")
        self.ranges = []
        self.alignment = alignment
        self.dmaMask = dmaMask
        gaps.reserveCapacity(64)
        updateRanges(ranges)
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
    /// reserved regions, e.g. the MSI window, are carved out). Live
    /// allocations stay; the gaps are rebuilt (O(n log n), not a hot path).
    public mutating func updateRanges(_ new: [ClosedRange<IOVA>]) {
        ranges = new.sorted { $0.lowerBound < $1.lowerBound }
        usable.removeAll(keepingCapacity: true)
        for r in ranges {
            let lo = r.lowerBound.rawValue, hi = r.upperBound.rawValue
            if let prev = usable.last, lo <= prev.upperBound {
                usable[usable.count - 1] = prev.lowerBound...max(prev.upperBound, hi)
            } else {
                usable.append(lo...hi)
            }
        }
        gaps.removeAll()
        var taken: [(key: UInt64, value: UInt64)] = []
        live.forEach { taken.append(($0, $1)) }
        taken.sort { $0.key < $1.key }
        var k = 0
        for r in usable {
            // The gaps of r: r minus the allocations that overlap it.
            var from: UInt64? = r.lowerBound
            while k > 0 && taken[k - 1].value >= r.lowerBound { k -= 1 }  // one may straddle two ranges
            while k < taken.count && taken[k].value < r.lowerBound { k += 1 }
            while let f = from, k < taken.count && taken[k].key <= r.upperBound {
                if taken[k].key > f { gaps.insert(start: f, last: taken[k].key - 1) }
                let (next, o) = taken[k].value.addingReportingOverflow(1)
                from = o || taken[k].value >= r.upperBound ? nil : max(f, next)
                k += 1
            }
            if let f = from { gaps.insert(start: f, last: r.upperBound) }
        }
    }

    @inline(__always)
    static func alignUp(_ v: UInt64, _ a: UInt64) -> UInt64? {
        let (s, o) = v.addingReportingOverflow(a - 1)
        return o ? nil : s & ~(a - 1)
    }

    /// Finds and records `length` bytes, aligned to `max(alignment, align)`;
    /// nil when no usable range has room. Throws when `align` is neither 0 nor
    /// a power of two.
    public mutating func allocate(length: UInt64, align: UInt64 = 0) throws(VFIOError) -> IOVA? {
        if align != 0 { try IOVAAllocator.checkAlignment(align, "align") }
        guard length > 0 else { return nil }
        guard let (gap, start) = gaps.firstFit(span: length - 1, align: max(alignment, align), limit: dmaMask) else {
            return nil
        }
        take(gap: gap, start, start + (length - 1))
        return IOVA(start)
    }

    /// Records a caller-chosen range; false when it overlaps an allocation or
    /// lies outside the usable ranges or the DMA mask.
    public mutating func reserve(_ iova: IOVA, length: UInt64) -> Bool {
        guard let gap = holder(iova, length: length) else { return false }
        take(gap: gap, iova.rawValue, iova.rawValue + (length - 1))
        return true
    }

    /// Whether a range would be accepted by ``reserve(_:length:)``.
    public func isUsable(_ start: IOVA, length: UInt64) -> Bool {
        holder(start, length: length) != nil
    }

    /// The gap that holds [start, start + length), if any, below the mask.
    private func holder(_ iova: IOVA, length: UInt64) -> GapIndex.Node? {
        guard length > 0 else { return nil }
        let start = iova.rawValue
        let (last, o) = start.addingReportingOverflow(length - 1)
        guard !o, last <= dmaMask, let g = gaps.floor(start), last <= g.last else { return nil }
        return g
    }

    /// Moves [start, last] from `gap` (which holds it) to the allocations.
    private mutating func take(gap: GapIndex.Node, _ start: UInt64, _ last: UInt64) {
        switch (start == gap.start, last == gap.last) {
        case (true, true): gaps.remove(start: gap.start)
        case (true, false): gaps.update(key: gap.start, start: last + 1, last: gap.last)
        case (false, true): gaps.update(key: gap.start, start: gap.start, last: start - 1)
        case (false, false):
            gaps.update(key: gap.start, start: gap.start, last: start - 1)
            gaps.insert(start: last + 1, last: gap.last)
        }
        live.insert(start, last: last)
    }

    /// Releases the allocation that starts at `iova`. Returns false, and
    /// changes nothing, when no allocation starts there (e.g. a second free).
    @discardableResult
    public mutating func free(_ iova: IOVA) -> Bool {
        guard let last = live.remove(iova.rawValue) else { return false }
        let start = iova.rawValue
        // The parts of [start, last] inside usable ranges go back (the ranges may have shrunk since).
        var i = 0
        if usable.count > 4 {  // the first range that ends at or after start
            var hi = usable.count
            while i < hi { let m = (i + hi) / 2; if usable[m].upperBound < start { i = m + 1 } else { hi = m } }
        }
        while i < usable.count && usable[i].lowerBound <= last {
            let r = usable[i]
            i += 1
            guard r.upperBound >= start else { continue }
            release(max(start, r.lowerBound), min(last, r.upperBound), in: r)
        }
        return true
    }

    /// Adds [s, l] (inside `r`, free) to the gaps, joined with a gap of `r` that touches it on either side.
    private mutating func release(_ s: UInt64, _ l: UInt64, in r: ClosedRange<UInt64>) {
        let left = s > r.lowerBound ? gaps.floor(s - 1).flatMap { $0.last == s - 1 ? $0 : nil } : nil
        let right = l < r.upperBound ? gaps.node(at: l + 1) : nil
        switch (left, right) {
        case let (left?, right?):
            gaps.remove(start: right.start)
            gaps.update(key: left.start, start: left.start, last: right.last)
        case let (left?, nil): gaps.update(key: left.start, start: left.start, last: l)
        case let (nil, right?): gaps.update(key: right.start, start: s, last: right.last)
        case (nil, nil): gaps.insert(start: s, last: l)
        }
    }

    /// Bytes allocated now; `UInt64.max` when the allocations cover all 2^64
    /// IOVAs (one more than a UInt64 holds).
    public var allocatedBytes: UInt64 {
        var total: UInt64? = 0
        live.forEach { start, last in
            guard let t = total else { return }
            let (sum, o) = t.addingReportingOverflow(last - start)
            let (next, o2) = sum.addingReportingOverflow(1)
            total = o || o2 ? nil : next
        }
        return total ?? .max
    }
}

/// Disjoint inclusive ranges [start, last] ordered by start: a treap kept in
/// one array (nodes refer to each other by index; released nodes are reused,
/// so a steady state allocates nothing). Each node also holds the widest span
/// (last - start) in its subtree, which lets ``firstFit(span:align:limit:)``
/// skip every subtree with no gap wide enough. Expected depth O(log n).
struct GapIndex: Sendable {
    struct Node: Sendable {
        var start: UInt64
        var last: UInt64
        var widest: UInt64
        var left: Int32
        var right: Int32
        var priority: UInt32
    }
    private var nodes: [Node] = []
    private var root: Int32 = -1
    private var unused: Int32 = -1  // released nodes, linked through `left`
    private var seed: UInt32 = 0x2545_f491

    mutating func reserveCapacity(_ n: Int) { nodes.reserveCapacity(n) }

    mutating func removeAll() {
        nodes.removeAll(keepingCapacity: true)
        root = -1
        unused = -1
    }

    /// The gap with the largest start <= `key`.
    @inline(__always)
    func floor(_ key: UInt64) -> Node? {
        var t = root, best: Int32 = -1
        while t >= 0 {
            if nodes[Int(t)].start <= key { best = t; t = nodes[Int(t)].right } else { t = nodes[Int(t)].left }
        }
        return best >= 0 ? nodes[Int(best)] : nil
    }

    /// The gap that starts at `key`.
    @inline(__always)
    func node(at key: UInt64) -> Node? {
        var t = root
        while t >= 0 {
            let n = nodes[Int(t)]
            if n.start == key { return n }
            t = key < n.start ? n.left : n.right
        }
        return nil
    }

    /// The lowest gap with an address `start`, aligned to `align`, such that
    /// [start, start + span] lies in the gap and at or below `limit`.
    func firstFit(span: UInt64, align: UInt64, limit: UInt64) -> (Node, UInt64)? {
        var found: (Node, UInt64)? = nil
        _ = search(root, span, align, limit, &found)
        return found
    }

    /// In-order search of t's subtree; true when the search is over (found,
    /// or a gap starts above `limit`, so every later one does too).
    private func search(_ t: Int32, _ span: UInt64, _ align: UInt64, _ limit: UInt64, _ found: inout (Node, UInt64)?) -> Bool {
        guard t >= 0 else { return false }
        let n = nodes[Int(t)]
        guard n.widest >= span else { return false }
        if search(n.left, span, align, limit, &found) { return true }
        if n.start > limit { return true }
        if n.last - n.start >= span, let c = IOVAAllocator.alignUp(n.start, align) {
            let (last, o) = c.addingReportingOverflow(span)
            if !o, last <= min(n.last, limit) { found = (n, c); return true }
        }
        return search(n.right, span, align, limit, &found)
    }

    mutating func insert(start: UInt64, last: UInt64) {
        seed ^= seed << 13; seed ^= seed >> 17; seed ^= seed << 5
        let node = Node(start: start, last: last, widest: last - start, left: -1, right: -1, priority: seed)
        let i: Int32
        if unused >= 0 {
            i = unused
            unused = nodes[Int(i)].left
            nodes[Int(i)] = node
        } else {
            i = Int32(nodes.count)
            nodes.append(node)
        }
        root = insert(i, into: root)
    }

    private mutating func insert(_ i: Int32, into t: Int32) -> Int32 {
        guard t >= 0 else { return i }
        if nodes[Int(i)].priority > nodes[Int(t)].priority {
            let (l, r) = split(t, nodes[Int(i)].start)
            nodes[Int(i)].left = l
            nodes[Int(i)].right = r
            pull(i)
            return i
        }
        if nodes[Int(i)].start < nodes[Int(t)].start {
            nodes[Int(t)].left = insert(i, into: nodes[Int(t)].left)
        } else {
            nodes[Int(t)].right = insert(i, into: nodes[Int(t)].right)
        }
        pull(t)
        return t
    }

    /// Removes the gap that starts at `start`.
    mutating func remove(start: UInt64) { root = remove(start, from: root) }

    private mutating func remove(_ key: UInt64, from t: Int32) -> Int32 {
        guard t >= 0 else { return -1 }
        let s = nodes[Int(t)].start
        if s == key {
            let joined = merge(nodes[Int(t)].left, nodes[Int(t)].right)
            nodes[Int(t)].left = unused
            unused = t
            return joined
        }
        if key < s { nodes[Int(t)].left = remove(key, from: nodes[Int(t)].left) } else {
            nodes[Int(t)].right = remove(key, from: nodes[Int(t)].right)
        }
        pull(t)
        return t
    }

    /// Changes the gap that starts at `key` to [start, last]; it must keep its
    /// place in the order (no other gap between the old and new start).
    mutating func update(key: UInt64, start: UInt64, last: UInt64) { update(key, start, last, root) }

    private mutating func update(_ key: UInt64, _ start: UInt64, _ last: UInt64, _ t: Int32) {
        guard t >= 0 else { return }
        let s = nodes[Int(t)].start
        if s == key {
            nodes[Int(t)].start = start
            nodes[Int(t)].last = last
        } else {
            update(key, start, last, key < s ? nodes[Int(t)].left : nodes[Int(t)].right)
        }
        pull(t)
    }

    @inline(__always)
    private mutating func pull(_ t: Int32) {
        let n = nodes[Int(t)]
        var w = n.last - n.start
        if n.left >= 0 { w = max(w, nodes[Int(n.left)].widest) }
        if n.right >= 0 { w = max(w, nodes[Int(n.right)].widest) }
        nodes[Int(t)].widest = w
    }

    /// (starts < key, starts >= key).
    private mutating func split(_ t: Int32, _ key: UInt64) -> (Int32, Int32) {
        guard t >= 0 else { return (-1, -1) }
        if nodes[Int(t)].start < key {
            let (l, r) = split(nodes[Int(t)].right, key)
            nodes[Int(t)].right = l
            pull(t)
            return (t, r)
        }
        let (l, r) = split(nodes[Int(t)].left, key)
        nodes[Int(t)].left = r
        pull(t)
        return (l, t)
    }

    /// Joins two treaps, every start in `a` below every start in `b`.
    private mutating func merge(_ a: Int32, _ b: Int32) -> Int32 {
        if a < 0 { return b }
        if b < 0 { return a }
        if nodes[Int(a)].priority > nodes[Int(b)].priority {
            nodes[Int(a)].right = merge(nodes[Int(a)].right, b)
            pull(a)
            return a
        }
        nodes[Int(b)].left = merge(a, nodes[Int(b)].left)
        pull(b)
        return b
    }
}

/// The live allocations, start -> last byte: open addressing with linear
/// probing and a multiplicative hash (IOVA starts are aligned, so the low
/// bits alone would collide), deletion by shifting the following entries back
/// (no tombstones). Swift's Dictionary hashes with SipHash, most of an
/// allocate + free pair's instructions; this is a multiply and a shift.
struct AllocationTable: Sendable {
    /// (start, last); an empty slot has last < start (no allocation does).
    private var slots = [(start: UInt64, last: UInt64)](repeating: AllocationTable.empty, count: 128)
    private var count = 0
    private static let empty: (start: UInt64, last: UInt64) = (1, 0)

    @inline(__always)
    private func home(_ key: UInt64) -> Int {
        // Fibonacci hashing: the top bits of key * 2^64/phi (slots.count is a power of two).
        Int(truncatingIfNeeded: (key &* 0x9e37_79b9_7f4a_7c15) >> UInt64(64 - slots.count.trailingZeroBitCount))
    }

    mutating func insert(_ start: UInt64, last: UInt64) {
        if (count + 1) * 2 > slots.count { grow() }
        let mask = slots.count - 1
        var i = home(start)
        while slots[i].last >= slots[i].start { i = (i + 1) & mask }
        slots[i] = (start, last)
        count += 1
    }

    /// Removes the allocation that starts at `start` and returns its last byte.
    mutating func remove(_ start: UInt64) -> UInt64? {
        let mask = slots.count - 1
        var i = home(start)
        while true {
            let s = slots[i]
            if s.last < s.start { return nil }
            if s.start == start { break }
            i = (i + 1) & mask
        }
        let last = slots[i].last
        // Shift back every entry of the run after i that may live at i.
        var j = i
        while true {
            j = (j + 1) & mask
            let s = slots[j]
            if s.last < s.start { break }
            let k = home(s.start)
            let stays = i <= j ? (i < k && k <= j) : (i < k || k <= j)
            if !stays {
                slots[i] = s
                i = j
            }
        }
        slots[i] = AllocationTable.empty
        count -= 1
        return last
    }

    func forEach(_ body: (UInt64, UInt64) -> Void) {
        for s in slots where s.last >= s.start { body(s.start, s.last) }
    }

    private mutating func grow() {
        let old = slots
        slots = [(start: UInt64, last: UInt64)](repeating: AllocationTable.empty, count: old.count * 2)
        count = 0
        for s in old where s.last >= s.start { insert(s.start, last: s.last) }
    }
}
