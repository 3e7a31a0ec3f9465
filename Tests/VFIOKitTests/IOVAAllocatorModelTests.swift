import Testing
import VFIOKit

/// The behaviours a gap index could break (first fit order, alignment,
/// coalescing, exhaustion, double free, reserved ranges), and a randomized
/// differential test against a byte map of the same small space.
@Suite struct IOVAAllocatorGapTests {
    @Test func firstFitTakesTheLowestHoleThatFits() throws {
        var a = try IOVAAllocator(ranges: [0...0xf_ffff], alignment: 0x1000)
        let pages = try (0..<8).map { _ in try #require(try a.allocate(length: 0x1000)) }
        #expect(pages.map(\.rawValue) == (0..<8).map { UInt64($0) * 0x1000 }, "ascending from the bottom")
        a.free(pages[5]); a.free(pages[2]); a.free(pages[6])
        // Holes: [0x2000] and [0x5000, 0x6fff]. A page takes the lowest; two pages the wide one.
        #expect(try a.allocate(length: 0x2000) == 0x5000)
        #expect(try a.allocate(length: 0x1000) == 0x2000)
        #expect(try a.allocate(length: 0x1000) == 0x8000, "no hole left below the top")
    }

    @Test func alignmentSkipsAHoleItDoesNotFitAligned() throws {
        var a = try IOVAAllocator(ranges: [0...0xf_ffff], alignment: 0x1000)
        #expect((a.reserve(0, length: 0x1000) as Bool))
        #expect((a.reserve(0x3000, length: 0x1000) as Bool))
        // Hole [0x1000, 0x2fff] is 8 KiB wide but has no 8 KiB-aligned 8 KiB in it.
        #expect(try a.allocate(length: 0x2000, align: 0x2000) == 0x4000)
        #expect(try a.allocate(length: 0x1000, align: 0x2000) == 0x2000)
        #expect(try a.allocate(length: 0x1000) == 0x1000)
        // A length that is not a page multiple: the next allocation starts at the next aligned address.
        #expect(try a.allocate(length: 0x1800) == 0x6000)
        #expect(try a.allocate(length: 0x1000) == 0x8000)
        try a.setAlignment(0x10000)
        #expect(try a.allocate(length: 0x1000) == 0x10000)
    }

    @Test func freeCoalescesWithBothNeighbours() throws {
        var a = try IOVAAllocator(ranges: [0...0x7fff], alignment: 0x1000)
        let p = try (0..<8).map { _ in try #require(try a.allocate(length: 0x1000)) }
        #expect(try a.allocate(length: 0x1000) == nil, "full")
        a.free(p[1]); a.free(p[3]); a.free(p[2])  // left, right, then the middle joins them
        #expect(try a.allocate(length: 0x3000) == 0x1000, "one 12 KiB hole")
        a.free(0x1000)
        a.free(p[0]); a.free(p[4])
        #expect(try a.allocate(length: 0x5000) == 0, "0-0x4fff is one hole again")
        #expect(a.allocatedBytes == 0x8000)
    }

    @Test func adjacentRangesAreNotJoined() throws {
        // Two usable ranges that touch: an allocation stays inside one of them, as before.
        var a = try IOVAAllocator(ranges: [0...0x1fff, 0x2000...0x3fff], alignment: 0x1000)
        #expect(try a.allocate(length: 0x3000) == nil)
        #expect(try a.allocate(length: 0x1000) == 0)
        #expect(!(a.reserve(0x1000, length: 0x2000) as Bool), "spans the boundary")
        let b = try #require(try a.allocate(length: 0x1000))
        a.free(b); a.free(0)
        #expect(try a.allocate(length: 0x3000) == nil, "freeing does not join them either")
        #expect(try a.allocate(length: 0x2000) == 0)
        #expect(try a.allocate(length: 0x2000) == 0x2000)
    }

    @Test func exhaustingTheSpaceThenFreeingOne() throws {
        var a = try IOVAAllocator(ranges: [0x10_0000...0x13_ffff], alignment: 0x1000, dmaMask: 0x12_ffff)
        var got: [IOVA] = []
        while let i = try a.allocate(length: 0x1000) { got.append(i) }
        #expect(got.count == 0x30, "up to the mask, not the range's end")
        #expect(a.allocatedBytes == 0x30_000)
        a.free(got[17])
        #expect(try a.allocate(length: 0x2000) == nil)
        #expect(try a.allocate(length: 0x1000) == got[17])
        a.dmaMask = .max
        #expect(try a.allocate(length: 0x10_000) == 0x13_0000, "the mask raised: the rest of the range")
    }

    @Test func doubleFreeIsRefused() throws {
        var a = try IOVAAllocator(ranges: [0...0xffff], alignment: 0x1000)
        let x = try #require(try a.allocate(length: 0x2000))
        let y = try #require(try a.allocate(length: 0x1000))
        a.free(x)
        a.free(x)  // the second free must not hand the range out twice
        a.free(0x1000)  // not the start of an allocation
        #expect(a.allocatedBytes == 0x1000)
        #expect(try a.allocate(length: 0x2000) == x)
        #expect(try a.allocate(length: 0x1000) == 0x3000, "not 0x0 or 0x1000 a second time")
        a.free(y)
        #expect(a.allocatedBytes == 0x3000)
    }

    @Test func reservedRangesAreSkippedAndReleasable() throws {
        var a = try IOVAAllocator(ranges: [0...0xffff], alignment: 0x1000)
        #expect(a.isUsable(0x1000, length: 0x1000))
        #expect((a.reserve(0x1000, length: 0x1000) as Bool))
        #expect(!a.isUsable(0x1000, length: 0x1000))
        #expect(!a.isUsable(0x800, length: 0x1000), "overlaps the reservation")
        #expect(a.isUsable(0x2000, length: 0xe000))
        #expect(!a.isUsable(0x2000, length: 0xe001), "past the range")
        #expect(try a.allocate(length: 0x2000) == 0x2000)
        #expect(try a.allocate(length: 0x1000) == 0)
        a.free(0x1000)
        #expect(try a.allocate(length: 0x1000) == 0x1000)
        // isUsable does not reserve.
        #expect(a.isUsable(0x4000, length: 0x1000))
        #expect(try a.allocate(length: 0x1000) == 0x4000)
    }

    @Test func updatedRangesKeepLiveAllocations() throws {
        var a = try IOVAAllocator(ranges: [0...0xffff], alignment: 0x1000)
        let x = try #require(try a.allocate(length: 0x3000))
        // The MSI window of a newly attached device is carved out; x stays allocated.
        a.updateRanges([0...0x1fff, 0x8000...0xffff])
        #expect(try a.allocate(length: 0x1000) == 0x8000)
        a.free(x)
        #expect(try a.allocate(length: 0x2000) == 0, "what is left of x inside a range is usable again")
        #expect(try a.allocate(length: 0x1000) == 0x9000, "x's part outside the ranges is not")
    }

    @Test func thousandsOfAllocations() throws {
        // Past the first table sizes and treap depths: every page, every other freed, then all.
        var a = try IOVAAllocator(ranges: [0x1000_0000...0x1fff_ffff], alignment: 0x1000)
        let n = 5000
        for k in 0..<n { #expect(try a.allocate(length: 0x1000) == IOVA(0x1000_0000 + UInt64(k) * 0x1000)) }
        for k in stride(from: 0, to: n, by: 2) { #expect((a.free(IOVA(0x1000_0000 + UInt64(k) * 0x1000)) as Bool)) }
        #expect(a.allocatedBytes == UInt64(n / 2) * 0x1000)
        #expect(try a.allocate(length: 0x2000) == IOVA(0x1000_0000 + UInt64(n) * 0x1000), "no two free pages touch")
        for k in stride(from: 0, to: n, by: 2) { #expect(try a.allocate(length: 0x1000) == IOVA(0x1000_0000 + UInt64(k) * 0x1000)) }
        for k in 0..<(n + 2) { #expect((a.free(IOVA(0x1000_0000 + UInt64(k) * 0x1000)) as Bool) == (k != n + 1)) }
        #expect(a.allocatedBytes == 0)
        #expect(try a.allocate(length: 0x1000_0000) == 0x1000_0000, "one gap again")
    }

    // MARK: the differential test

    /// The reference: one flag per byte of a 1 KiB space, first fit by brute force.
    struct ByteModel {
        var base: UInt64
        var used = [Bool](repeating: false, count: 1024)
        var range = [Int](repeating: -1, count: 1024)  // which usable range each byte is in
        var live: [UInt64: UInt64] = [:]  // start -> length
        var alignment: UInt64 = 1
        var mask: UInt64 = .max

        func fits(_ off: Int, _ length: UInt64) -> Bool {
            let end = off + Int(length) - 1
            guard end < 1024, base + UInt64(end) <= mask, range[off] >= 0 else { return false }
            return (off...end).allSatisfy { !used[$0] && range[$0] == range[off] }
        }
        mutating func take(_ off: Int, _ length: UInt64) {
            for i in off..<(off + Int(length)) { used[i] = true }
            live[base + UInt64(off)] = length
        }
        mutating func allocate(_ length: UInt64, _ align: UInt64) -> UInt64? {
            guard length > 0 else { return nil }
            let a = max(alignment, align)
            for off in 0..<1024 where (base + UInt64(off)) % a == 0 && fits(off, length) {
                take(off, length)
                return base + UInt64(off)
            }
            return nil
        }
        mutating func reserve(_ start: UInt64, _ length: UInt64) -> Bool {
            guard length > 0, start >= base, start - base < 1024, fits(Int(start - base), length) else { return false }
            take(Int(start - base), length)
            return true
        }
        mutating func free(_ start: UInt64) {
            guard let length = live.removeValue(forKey: start) else { return }
            for i in Int(start - base)..<Int(start - base + length) { used[i] = false }
        }
        mutating func setRanges(_ rs: [ClosedRange<Int>]) {
            range = [Int](repeating: -1, count: 1024)
            for (k, r) in rs.enumerated() { for i in r { range[i] = k } }
        }
        var allocatedBytes: UInt64 { live.values.reduce(0, +) }
    }

    /// Random usable ranges of the 1 KiB space: disjoint, sometimes touching, sometimes reaching its end.
    static func randomRanges(_ rng: inout some RandomNumberGenerator) -> [ClosedRange<Int>] {
        var cuts = Set<Int>()
        for _ in 0..<Int.random(in: 1...6, using: &rng) { cuts.insert(Int.random(in: 0...1024, using: &rng)) }
        let c = [0] + cuts.sorted() + [1024]
        var out: [ClosedRange<Int>] = []
        for k in 0..<(c.count - 1) where c[k] < c[k + 1] && Int.random(in: 0..<4, using: &rng) != 0 {
            out.append(c[k]...(c[k + 1] - 1))
        }
        return out.isEmpty ? [0...1023] : out
    }

    @Test(arguments: [UInt64(0), UInt64.max - 1023])
    func matchesAByteModel(base: UInt64) throws {
        var rng = SplitMix64(seed: base ^ 0x5eed)
        for round in 0..<40 {
            let rs = Self.randomRanges(&rng)
            var model = ByteModel(base: base)
            model.setRanges(rs)
            func iova(_ r: ClosedRange<Int>) -> ClosedRange<IOVA> { IOVA(base + UInt64(r.lowerBound))...IOVA(base + UInt64(r.upperBound)) }
            var a = try IOVAAllocator(ranges: rs.shuffled(using: &rng).map(iova), alignment: 1)
            for step in 0..<300 {
                let what = "round \(round) step \(step)"
                switch Int.random(in: 0..<100, using: &rng) {
                case 0..<45:
                    let length = UInt64.random(in: 0...48, using: &rng)
                    let align: UInt64 = [0, 0, 1, 2, 8, 16, 64, 256].randomElement(using: &rng)!
                    #expect(try a.allocate(length: length, align: align)?.rawValue == model.allocate(length, align), "\(what)")
                case 45..<80:
                    // Free a live allocation, or an address that is not one (refused).
                    let start = Int.random(in: 0..<4, using: &rng) == 0 || model.live.isEmpty
                        ? base + UInt64.random(in: 0..<1024, using: &rng) : model.live.keys.randomElement(using: &rng)!
                    a.free(IOVA(start)); model.free(start)
                case 80..<92:
                    let start = base &+ UInt64.random(in: 0..<1040, using: &rng)
                    let length = UInt64.random(in: 0...40, using: &rng)
                    let usable = a.isUsable(IOVA(start), length: length)
                    let reserved = a.reserve(IOVA(start), length: length)
                    #expect(usable == reserved, "\(what)")
                    #expect(reserved == model.reserve(start, length), "\(what): reserve \(start - base) +\(length)")
                case 92..<95:
                    let al: UInt64 = [1, 2, 4, 32].randomElement(using: &rng)!
                    try a.setAlignment(al); model.alignment = al
                case 95..<98:
                    let m = Int.random(in: 0..<3, using: &rng) == 0 ? UInt64.max : base + UInt64.random(in: 0..<1024, using: &rng)
                    a.dmaMask = m; model.mask = m
                default:
                    let nr = Self.randomRanges(&rng)
                    a.updateRanges(nr.map(iova)); model.setRanges(nr)
                }
                #expect(a.allocatedBytes == model.allocatedBytes, "\(what)")
            }
        }
    }
}

/// A seeded generator, so a failing sequence repeats.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
