import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Superpage mappings read back from the IOMMU's page tables: the edu attached in each DMA mode,
/// a 2 MiB hugetlb buffer and a 64 KiB anonymous buffer mapped, then the VT-d driver's debugfs
/// (`/sys/kernel/debug/iommu/intel/<BDF>/domain_translation_struct`, CONFIG_INTEL_IOMMU_DEBUGFS)
/// read: which leaves map each IOVA, how large, to which physical page (from /proc/self/pagemap).
/// Intel VT-d only: AMD-Vi and virtio-iommu have no such file (see amd.txt and virtio.txt).
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("SuperpageGuestTests"))
struct SuperpageGuestTests {
    /// 2 MiB aligned and below the edu's 28-bit DMA mask.
    static let hugeIOVA: UInt64 = 0x0040_0000
    static let smallIOVA: UInt64 = 0x0080_0000
    static let smallLength = 64 << 10

    /// The leaf size the kernel writes for a 2 MiB hugetlb page in `mode`. Every mode maps it
    /// as one 2 MiB leaf except iommufd's compat type1: `iommufd_vfio_set_iommu` calls
    /// `iopt_disable_large_pages` for VFIO_TYPE1_IOMMU (drivers/iommu/iommufd/vfio_compat.c:
    /// type1 v1 may unmap inside a mapping, which a huge IOPTE cannot do), so iommufd maps
    /// page by page (`batch_iommu_map_small`) and the 2 MiB page becomes 512 4 KiB entries.
    /// The legacy type1 v1 driver (vfio_iommu_type1.c) has no such rule and maps it huge.
    static func hugetlbLeafSize(_ mode: DMAMode) -> UInt64 {
        mode == .compatType1 ? VTdPageTableDump.size4K : VTdPageTableDump.size2M
    }

    @Test func theIOMMUAdvertises2MiBSecondLevelPages() throws {
        let sllps = try Self.secondLevelPageSizes()
        #expect(sllps & 1 != 0, "cap.SLLPS bit 0 (2 MiB second-level pages) must be set; SLLPS=0x\(String(sllps, radix: 16))")
    }

    @Test(arguments: DMAMode.allCases)
    func hugetlbAndAnonymousLeavesAsMapped(_ mode: DMAMode) throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let space = try DMASpace(mode: mode, dmaMask: EduDevice.dmaMask)
            let device = try space.openDevice(try PCIAddress(parsing: bdf))
            let huge = try DMABuffer(length: DMABuffer.hugePageSize, backing: .hugePages)
            let small = try DMABuffer(length: Self.smallLength)
            huge.fill(0xA5)  // both faulted in, so pagemap names their pages
            small.fill(0x5A)
            var hugeMapping: DMAMapping? = try space.map(huge, at: IOVA(Self.hugeIOVA))
            var smallMapping: DMAMapping? = try space.map(small, at: IOVA(Self.smallIOVA))
            let hugeRange = Self.hugeIOVA..<(Self.hugeIOVA + UInt64(huge.length))
            let smallRange = Self.smallIOVA..<(Self.smallIOVA + UInt64(small.length))

            let table = try Self.pageTable(of: bdf)
            #expect(table.device == bdf)
            let leafSize = Self.hugetlbLeafSize(mode)
            let expectedHuge = try Self.expectedLeaves(of: huge, at: Self.hugeIOVA, leafSize: leafSize)
            let hugeLeaves = table.leaves(overlapping: hugeRange)
            #expect(hugeLeaves.map(\.description) == expectedHuge.map(\.description),
                    "\(mode): the 2 MiB hugetlb page at IOVA 0x\(String(Self.hugeIOVA, radix: 16)), \(hugeLeaves.count) leaves: \(hugeLeaves.prefix(3))")
            let expectedSmall = try Self.expectedLeaves(of: small, at: Self.smallIOVA, leafSize: VTdPageTableDump.size4K)
            let smallLeaves = table.leaves(overlapping: smallRange)
            #expect(smallLeaves.map(\.description) == expectedSmall.map(\.description),
                    "\(mode): the 64 KiB anonymous buffer at IOVA 0x\(String(Self.smallIOVA, radix: 16)): \(smallLeaves)")
            #expect((hugeLeaves + smallLeaves).allSatisfy { $0.readable && $0.writable }, "\(mode): mapped read-write")

            try hugeMapping.take()!.unmap()
            try smallMapping.take()!.unmap()
            let after = try Self.pageTable(of: bdf)
            #expect(after.leaves(overlapping: hugeRange).isEmpty && after.leaves(overlapping: smallRange).isEmpty,
                    "\(mode): unmapped IOVAs must have no leaves: \(after.leaves(overlapping: hugeRange.lowerBound..<smallRange.upperBound))")
            try device.close()
        }
        #expect(Guest.openFDCount() == fdsBefore, "teardown must close every fd")
    }

    // MARK: helpers

    /// cap.SLLPS (bits 37:34) of the guest's first VT-d unit: bit 0 2 MiB, bit 1 1 GiB.
    static func secondLevelPageSizes() throws -> UInt64 {
        let units = try FileManager.default.contentsOfDirectory(atPath: "/sys/class/iommu").filter { $0.hasPrefix("dmar") }.sorted()
        let unit = try #require(units.first, "no VT-d unit in /sys/class/iommu")
        let text = try String(contentsOfFile: "/sys/class/iommu/\(unit)/intel-iommu/cap", encoding: .utf8)
        let cap = try #require(UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16), "cap: \(text)")
        return (cap >> 34) & 0xF
    }

    static func pageTable(of bdf: String) throws -> VTdPageTableDump {
        let path = VTdPageTableDump.path(for: bdf)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try VTdPageTableDump(parsing: text)
    }

    /// The leaves `buffer` mapped at `iova` must give: one per `leafSize`, each naming the
    /// physical page /proc/self/pagemap gives for that part of the buffer.
    static func expectedLeaves(of buffer: DMABuffer, at iova: UInt64, leafSize: UInt64) throws -> [VTdPageTableDump.Leaf] {
        try stride(from: 0, to: UInt64(buffer.length), by: Int(leafSize)).map { offset in
            let physical = try physicalAddress(UInt64(UInt(bitPattern: buffer.baseAddress)) + offset)
            return VTdPageTableDump.Leaf(iova: iova + offset, size: leafSize, entry: physical | 0x3 | (leafSize > 4096 ? 0x80 : 0))
        }
    }

    /// The physical address of a page of this process (root reads PFNs from /proc/self/pagemap).
    static func physicalAddress(_ virtual: UInt64) throws -> UInt64 {
        let pagemap = try #require(FileHandle(forReadingAtPath: "/proc/self/pagemap"))
        defer { try? pagemap.close() }
        try pagemap.seek(toOffset: virtual / 4096 * 8)
        let bytes = try #require(try pagemap.read(upToCount: 8))
        try #require(bytes.count == 8)
        let entry = bytes.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        try #require(entry >> 63 == 1, "page at 0x\(String(virtual, radix: 16)) not present")
        let pfn = entry & ((1 << 55) - 1)
        try #require(pfn != 0, "pagemap gives no PFN (not root?)")
        return pfn << 12
    }
}

/// A 1 GiB hugetlb page read back from the VT-d page tables in each DMA mode. Needs a boot of its
/// own (`Scripts/vm.sh --hugepage-1g`: `-cpu max` for pdpe1gb, `hugepagesz=1G hugepages=1`, 4G of
/// memory; Tests/GuestManifest/intel-1gib.txt): the normal boot has no 1 GiB page. QEMU's
/// intel-iommu advertises 1 GiB second-level pages (cap.SLLPS bit 1), so the kernel may use them.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("HugePage1GiBGuestTests"))
struct HugePage1GiBGuestTests {
    /// 1 GiB aligned, inside VT-d's 48-bit address width (no DMA: the edu's 28-bit mask does not matter).
    static let iova: UInt64 = 0x4000_0000
    static let gib = 1 << 30
    static let freePages = "/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"

    /// The leaf size the kernel writes for a 1 GiB hugetlb page: 1 GiB, except in compat type1
    /// (iopt_disable_large_pages, see SuperpageGuestTests.hugetlbLeafSize): 262,144 4 KiB entries.
    static func leafSize(_ mode: DMAMode) -> UInt64 {
        mode == .compatType1 ? VTdPageTableDump.size4K : VTdPageTableDump.size1G
    }

    @Test func theIOMMUAdvertises1GiBSecondLevelPages() throws {
        let sllps = try SuperpageGuestTests.secondLevelPageSizes()
        #expect(sllps & 2 != 0, "cap.SLLPS bit 1 (1 GiB second-level pages) must be set; SLLPS=0x\(String(sllps, radix: 16))")
    }

    @Test(arguments: DMAMode.allCases)
    func aGiBHugetlbPageIsMappedAsOneLeaf(_ mode: DMAMode) throws {
        let free = try String(contentsOfFile: Self.freePages, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(Int(free) ?? 0 >= 1, "no free 1 GiB hugetlb page (\(Self.freePages): \(free)): boot with Scripts/vm.sh --hugepage-1g")
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        // Safety: a fresh shared anonymous mapping of one 1 GiB hugetlb page (30 << MAP_HUGE_SHIFT),
        // unmapped below after the IOMMU mapping is gone.
        let raw = mmap(nil, Self.gib, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | (30 << MAP_HUGE_SHIFT), -1, 0)
        let page = try #require(raw == MAP_FAILED ? nil : raw, "mmap of a 1 GiB hugetlb page: errno \(errno)")
        defer {
            // Safety: the mapping made above, of that length, no longer mapped in the IOMMU.
            #expect(munmap(page, Self.gib) == 0)
        }
        // Safety: writes one byte inside the mapping, faulting the page in.
        page.storeBytes(of: 0xA5, as: UInt8.self)
        let base = try SuperpageGuestTests.physicalAddress(UInt64(UInt(bitPattern: page)))
        do {
            let space = try DMASpace(mode: mode, dmaMask: EduDevice.dmaMask)
            let device = try space.openDevice(try PCIAddress(parsing: bdf))
            if let ioas = space.ioas {
                #expect(try ioas.unsafeMap(address: UnsafeRawPointer(page), length: Self.gib, at: IOVA(Self.iova)) == IOVA(Self.iova))
            } else {
                let container = try #require(space.container)
                try container.unsafeMapDMA(address: UnsafeRawPointer(page), length: Self.gib, at: IOVA(Self.iova))
            }
            let range = Self.iova..<(Self.iova + UInt64(Self.gib))
            let leaves = try SuperpageGuestTests.pageTable(of: bdf).leaves(overlapping: range)
            let size = Self.leafSize(mode)
            #expect(leaves.count == Self.gib / Int(size), "\(mode): \(leaves.count) leaves, first \(leaves.prefix(2))")
            let wrong = leaves.enumerated().first { i, leaf in
                let offset = UInt64(i) * size
                return leaf.iova != Self.iova + offset || leaf.size != size || leaf.physicalAddress != base + offset
                    || !leaf.readable || !leaf.writable
            }
            #expect(wrong == nil, "\(mode): leaf \(wrong.map { "\($0.offset): \($0.element)" } ?? ""): each leaf of \(size) bytes maps the page at 0x\(String(base, radix: 16)) plus its offset, read-write")
            if let ioas = space.ioas {
                #expect(try ioas.unmap(iova: IOVA(Self.iova), length: UInt64(Self.gib)) == UInt64(Self.gib))
            } else {
                let container = try #require(space.container)
                #expect(try container.unmapDMA(iova: IOVA(Self.iova), length: UInt64(Self.gib)) == UInt64(Self.gib))
            }
            #expect(try SuperpageGuestTests.pageTable(of: bdf).leaves(overlapping: range).isEmpty, "\(mode): unmapped")
            try device.close()
        }
        #expect(Guest.openFDCount() == fdsBefore, "teardown must close every fd")
    }
}
