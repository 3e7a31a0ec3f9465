import Testing
import VFIOKitTestSupport

/// The parser of the VT-d debugfs page table dump (domain_translation_struct) that
/// SuperpageGuestTests read in the guest. Fixtures written from the format of Linux 7.2's
/// drivers/iommu/intel/debugfs.c and a guest run's output (QEMU 10.0 intel-iommu: legacy mode,
/// a 4-level table, non-leaf entries 0x...403); the 1 GiB line is made up in that format.
@Suite struct VTdPageTableTests {
    static let header = "IOVA_PFN         \tPML5E             \tPML4E             \tPDPE              \tPDE               \tPTE\n"

    /// One leaf of each size: a 2 MiB PDE at IOVA 0x400000, two 4 KiB PTEs at 0x800000, and a
    /// 1 GiB PDPE at 0x40000000 (the PML5E column is 0 on a 4-level table).
    static let fixture = "Device 0000:00:03.0 @0x3b59000\n" + header
        + "0x0000000000400 |\t0x0000000000000000\t0x0000000003cb9403\t0x0000000003b50403\t0x0000000000200083\n"
        + "0x0000000000800 |\t0x0000000000000000\t0x0000000003cb9403\t0x0000000003b50403\t0x0000000003b4d403\t0x0000000006e5b003\n"
        + "0x0000000000801 |\t0x0000000000000000\t0x0000000003cb9403\t0x0000000003b50403\t0x0000000003b4d403\t0x0000000006e5c001\n"
        + "0x0000000040000 |\t0x0000000000000000\t0x0000000003cb9403\t0x0000000040000083\n"

    @Test func leavesOfEachSize() throws {
        let dump = try VTdPageTableDump(parsing: Self.fixture)
        #expect(dump.device == "0000:00:03.0")
        #expect(dump.pasid == nil)
        #expect(dump.root == 0x3b59000)
        #expect(dump.leaves.map(\.iova) == [0x400000, 0x800000, 0x801000, 0x4000_0000])
        #expect(dump.leaves.map(\.size) == [1 << 21, 1 << 12, 1 << 12, 1 << 30])
        #expect(dump.leaves.map(\.physicalAddress) == [0x200000, 0x6e5b000, 0x6e5c000, 0x4000_0000])
        #expect(dump.leaves.map(\.writable) == [true, true, false, true])
        #expect(dump.leaves.map(\.readable) == [true, true, true, true])
        #expect(dump.leaves[0].description == "IOVA 0x400000 2 MiB -> 0x200000")
    }

    /// What compat type1 prints for a 128 MiB run of hugetlb pages: 32,768 4 KiB entries across 64
    /// page tables (a 1 GiB page is 262,144 lines in the guest; 8 times this, kept short here).
    @Test func manyLinesOf4KiBEntriesAcrossPageTables() throws {
        // Each PTE's line differs from the previous in the PFN, the page table (every 512) and the PTE.
        var lines = ["Device 0000:00:03.0 @0x3b59000", String(Self.header.dropLast())]
        lines.reserveCapacity(32_770)
        for i in 0..<32_768 {
            let table = 0x0300_0000 + (i >> 9) << 12
            lines.append("0x\(Self.hex(0x40000 + i, 13)) |\t0x0000000000000000\t0x0000000003cb9403\t0x0000000003b50403\t0x\(Self.hex(table | 0x403, 16))\t0x\(Self.hex(0x8000_0000 + i << 12 | 0x3, 16))")
        }
        let text = lines.joined(separator: "\n") + "\n"
        let dump = try VTdPageTableDump(parsing: text)
        #expect(dump.leaves.count == 32_768)
        let wrong = dump.leaves.enumerated().first { i, leaf in
            leaf.iova != 0x4000_0000 + UInt64(i) << 12 || leaf.size != 4096 || leaf.physicalAddress != 0x8000_0000 + UInt64(i) << 12
        }
        #expect(wrong == nil)
    }

    static func hex(_ value: Int, _ width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    @Test func leavesOverlappingARange() throws {
        let dump = try VTdPageTableDump(parsing: Self.fixture)
        #expect(dump.leaves(overlapping: 0x5f_f000..<0x60_0000).map(\.iova) == [0x400000])  // inside the 2 MiB leaf
        #expect(dump.leaves(overlapping: 0x60_0000..<0x80_0000).isEmpty)
        #expect(dump.leaves(overlapping: 0x80_0fff..<0x80_1001).map(\.iova) == [0x800000, 0x801000])
        #expect(dump.leaves(overlapping: 0x7fff_f000..<0x8000_0000).map(\.iova) == [0x4000_0000])
    }

    @Test func scalableModeNamesThePASIDAndAnEmptyTableHasNoLeaves() throws {
        let dump = try VTdPageTableDump(parsing: "Device 0000:01:02.0 with pasid 0 @0x10f0000\n" + Self.header)
        #expect(dump.device == "0000:01:02.0")
        #expect(dump.pasid == 0)
        #expect(dump.root == 0x10f0000)
        #expect(dump.leaves.isEmpty)
    }

    @Test(arguments: [
        // Remapping off, or no context entry: no Device line.
        ("DMA Remapping is not enabled on dmar0\n", "no `Device` line"),
        ("", "no `Device` line"),
        // Two entries: not a leaf line the kernel prints.
        ("Device 0000:00:03.0 @0x1000\n" + header + "0x0000000000400 |\t0x0\t0x0000000003a5d003\n", "2 entries"),
        // A 2 MiB leaf without the superpage bit.
        ("Device 0000:00:03.0 @0x1000\n" + header + "0x0000000000400 |\t0x0\t0x1003\t0x2003\t0x4200003\n", "without the superpage bit"),
        // A 2 MiB leaf at an IOVA that is not 2 MiB aligned.
        ("Device 0000:00:03.0 @0x1000\n" + header + "0x0000000000401 |\t0x0\t0x1003\t0x2003\t0x4200083\n", "not aligned"),
        ("Device 0000:00:03.0 @0x1000\n" + header + "0x0000000000400 |\t0x0\tzz\t0x2003\t0x4200083\n", "0x-prefixed hexadecimal entries"),
        ("Device 0000:00:03.0 @0x1000\n0x0000000000400 |\t0x0\t0x1003\t0x2003\t0x4200083\n", "before the column header"),
        ("Device 0000:00:03.0 0x1000\n" + header, "expected `Device"),
        // 17 hex digits: more than 64 bits.
        ("Device 0000:00:03.0 @0x1000\n" + header + "0x0000000000400 |\t0x0\t0x1003\t0x2003\t0x00000000004200083\n", "0x-prefixed hexadecimal entries"),
    ])
    func malformedTextIsRefusedWithTheReason(_ text: String, _ reason: String) {
        #expect {
            _ = try VTdPageTableDump(parsing: text)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }
}
