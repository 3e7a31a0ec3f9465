/// A device's VT-d DMA page table as the Intel IOMMU driver's debugfs prints it:
/// `/sys/kernel/debug/iommu/intel/<BDF>/domain_translation_struct` (CONFIG_INTEL_IOMMU_DEBUGFS),
/// read from the context (legacy mode) or PASID entry (scalable mode) the IOMMU uses now, so it
/// shows the domain the device is attached to at that moment.
///
/// The format (Linux 7.2, drivers/iommu/intel/debugfs.c): a line `Device SSSS:BB:DD.F @0xPGD`
/// (scalable mode: `... with pasid P @0xPGD`), a column header line (`IOVA_PFN PML5E PML4E PDPE
/// PDE PTE`), then one line per present leaf in IOVA order:
///
///     0x<IOVA >> 12, 13 hex digits> |<TAB>0x<PML5E><TAB>0x<PML4E><TAB>0x<PDPE>[<TAB>0x<PDE>[<TAB>0x<PTE>]]
///
/// each entry 16 hex digits, the PML5E 0 on a 4-level table. The walk stops at a superpage
/// entry (bit 7), so the number of entries gives the leaf's size: three (a PDPE) is 1 GiB, four
/// (a PDE) 2 MiB, five (a PTE) 4 KiB. A line `DMA Remapping is not enabled on dmarN` is printed
/// for an IOMMU with translation off.
public struct VTdPageTableDump: Sendable, Equatable {
    /// One leaf entry: a page the IOMMU maps.
    public struct Leaf: Sendable, Equatable, CustomStringConvertible {
        /// The first IOVA the leaf maps.
        public var iova: UInt64
        /// 4 KiB, 2 MiB or 1 GiB.
        public var size: UInt64
        /// The leaf entry as the IOMMU reads it.
        public var entry: UInt64

        public init(iova: UInt64, size: UInt64, entry: UInt64) {
            self.iova = iova
            self.size = size
            self.entry = entry
        }

        /// The physical address the leaf maps (bits 51..12 of the entry, aligned to `size`).
        public var physicalAddress: UInt64 { entry & 0x000F_FFFF_FFFF_F000 & ~(size - 1) }
        /// Bit 0: the device may read.
        public var readable: Bool { entry & 1 != 0 }
        /// Bit 1: the device may write.
        public var writable: Bool { entry & 2 != 0 }
        /// Bit 7: a superpage (a 2 MiB PDE or a 1 GiB PDPE leaf).
        public var superpage: Bool { entry & 0x80 != 0 }

        public var description: String {
            "IOVA 0x\(String(iova, radix: 16)) \(VTdPageTableDump.sizeName(size)) -> 0x\(String(physicalAddress, radix: 16))"
        }
    }

    /// What made a text not a page table dump: the line (1-based) and why.
    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var reason: String
        public var description: String { "domain_translation_struct line \(line): \(reason)" }
    }

    /// The device the dump is for, `SSSS:BB:DD.F`.
    public var device: String
    /// The PASID (scalable mode), nil in legacy mode.
    public var pasid: UInt32?
    /// The page table's root (physical address).
    public var root: UInt64
    /// The present leaves, in the order printed (ascending IOVA).
    public var leaves: [Leaf]

    public static let size4K: UInt64 = 1 << 12
    public static let size2M: UInt64 = 1 << 21
    public static let size1G: UInt64 = 1 << 30

    static func sizeName(_ size: UInt64) -> String {
        switch size {
        case size1G: "1 GiB"
        case size2M: "2 MiB"
        case size4K: "4 KiB"
        default: "\(size) bytes"
        }
    }

    /// Parses the text of one `domain_translation_struct` file. Throws when the text has no
    /// `Device` line (the device is not translated: no context entry, or remapping is off) or
    /// a line does not have the kernel's format.
    public init(parsing text: String) throws(ParseError) {
        var device: String?
        var pasid: UInt32?
        var root: UInt64 = 0
        var leaves: [Leaf] = []
        var sawHeader = false
        // Split and scan bytes, not Characters: a 1 GiB range in 4 KiB entries is 262,144 lines.
        var entries: [UInt64] = []
        entries.reserveCapacity(5)
        for (index, bytes) in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            if sawHeader, let pfn = Self.scanLeafLine(bytes, into: &entries) {
                let size: UInt64
                switch entries.count {
                case 3: size = Self.size1G
                case 4: size = Self.size2M
                case 5: size = Self.size4K
                default:
                    throw ParseError(line: number, reason: "\(entries.count) entries; a leaf line has 3 (1 GiB), 4 (2 MiB) or 5 (4 KiB)")
                }
                let leaf = Leaf(iova: pfn << 12, size: size, entry: entries[entries.count - 1])
                guard leaf.iova % size == 0 else {
                    throw ParseError(line: number, reason: "\(Self.sizeName(size)) leaf at IOVA 0x\(String(leaf.iova, radix: 16)) is not aligned to its size")
                }
                guard size == Self.size4K || leaf.superpage else {
                    throw ParseError(line: number, reason: "a \(Self.sizeName(size)) leaf without the superpage bit (7): 0x\(String(leaf.entry, radix: 16))")
                }
                leaves.append(leaf)
                continue
            }
            let line = Substring(bytes)
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) || line.hasPrefix("DMA Remapping is not enabled") { continue }
            if line.hasPrefix("Device ") {
                guard device == nil else { throw ParseError(line: number, reason: "a second Device line") }
                let words = line.split(separator: " ")
                guard words.count >= 3, let at = words.last, at.hasPrefix("@0x"),
                      let value = UInt64(at.dropFirst(3), radix: 16) else {
                    throw ParseError(line: number, reason: "expected `Device SSSS:BB:DD.F [with pasid P] @0xROOT`, got `\(line)`")
                }
                device = String(words[1])
                root = value
                if words.count == 6, words[2] == "with", words[3] == "pasid" {
                    guard let p = UInt32(words[4], radix: 16) else {
                        throw ParseError(line: number, reason: "PASID `\(words[4])` is not hexadecimal")
                    }
                    pasid = p
                } else if words.count != 3 {
                    throw ParseError(line: number, reason: "expected `Device SSSS:BB:DD.F [with pasid P] @0xROOT`, got `\(line)`")
                }
                continue
            }
            if line.hasPrefix("IOVA_PFN") {
                guard device != nil else { throw ParseError(line: number, reason: "column header before the Device line") }
                sawHeader = true
                continue
            }
            guard sawHeader else { throw ParseError(line: number, reason: "a leaf line before the column header: `\(line)`") }
            throw ParseError(line: number, reason: "expected `0xIOVA_PFN |` then 0x-prefixed hexadecimal entries, got `\(line)`")
        }
        guard let device else {
            throw ParseError(line: 1, reason: "no `Device` line: the device has no translated domain (no context entry, or DMA remapping is off)")
        }
        guard sawHeader else { throw ParseError(line: 1, reason: "no column header line (IOVA_PFN ...)") }
        self.device = device
        self.pasid = pasid
        self.root = root
        self.leaves = leaves
    }

    /// The leaves that map any byte of `range`.
    public func leaves(overlapping range: Range<UInt64>) -> [Leaf] {
        leaves.filter { $0.iova < range.upperBound && range.lowerBound < $0.iova + $0.size }
    }

    /// The debugfs file for `bdf` (`0000:00:03.0`): the page table of the domain it is attached to.
    public static func path(for bdf: String) -> String {
        "/sys/kernel/debug/iommu/intel/\(bdf)/domain_translation_struct"
    }

    /// `0xPFN |` then tab-separated `0xENTRY`s: the PFN, and the entries in `entries`; nil when
    /// the line is not of that form (the caller then says why).
    static func scanLeafLine(_ line: Substring.UTF8View, into entries: inout [UInt64]) -> UInt64? {
        entries.removeAll(keepingCapacity: true)
        var i = line.startIndex
        func skipBlanks() { while i < line.endIndex, line[i] == 0x20 || line[i] == 0x09 { line.formIndex(after: &i) } }
        func hexNumber() -> UInt64? {
            guard i < line.endIndex, line[i] == UInt8(ascii: "0") else { return nil }
            line.formIndex(after: &i)
            guard i < line.endIndex, line[i] == UInt8(ascii: "x") else { return nil }
            line.formIndex(after: &i)
            var value: UInt64 = 0
            var digits = 0
            while i < line.endIndex {
                let c = line[i]
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: d = 0xFF
                }
                if d == 0xFF { break }
                guard digits < 16 else { return nil }
                value = value << 4 | UInt64(d)
                digits += 1
                line.formIndex(after: &i)
            }
            guard digits > 0 else { return nil }
            if i < line.endIndex, line[i] != 0x20, line[i] != 0x09 { return nil }
            return value
        }
        skipBlanks()
        guard let pfn = hexNumber() else { return nil }
        skipBlanks()
        guard i < line.endIndex, line[i] == UInt8(ascii: "|") else { return nil }
        line.formIndex(after: &i)
        skipBlanks()
        while i < line.endIndex {
            guard let value = hexNumber() else { return nil }
            entries.append(value)
            skipBlanks()
        }
        return pfn
    }
}
