// The tables a user chooses a DMA mode by: map and unmap of one large buffer
// (default 1 GiB) in each of the five DMA modes, for 4 KiB anonymous pages,
// 2 MiB hugetlb pages and a memfd (IOMMU_IOAS_MAP_FILE where the mode has it:
// native iommufd only; the container modes map the memfd by its address).
// In the guest, with the edu at VFIOKIT_EDU attached, so every mapping is
// written into a real (emulated) IOMMU domain.

import CBenchSupport
import Foundation
import VFIOKit
import VFIOKitTestSupport

struct ModeRow {
    var mode: DMAMode
    /// Per backing (anonymous, hugePages, memfd): median map and unmap ns, or why not.
    var cells: [(map: Double, unmap: Double, how: String)?]
    var notes: [String]
}

let modeBackings: [(DMABuffer.Backing, String)] = [(.anonymous, "4 KiB anon"), (.hugePages, "2 MiB hugetlb"), (.memfd, "memfd")]

func runDMAModes(bytes: Int, rounds: Int) throws -> [ModeRow] {
    let bdf = try Guest.requireEdu()
    _ = try Guest.bindToVFIO(bdf)
    defer { try? Guest.unbind(bdf) }
    let address = try PCIAddress(parsing: bdf)
    let modes: [DMAMode] = [.type1, .type1v2, .compatType1, .compatType1v2, .iommufd]
    var rows = modes.map { ModeRow(mode: $0, cells: Array(repeating: nil, count: modeBackings.count), notes: []) }
    // One buffer at a time (the guest holds 1 GiB of hugepages besides), touched
    // first so no mode pays the first-touch faults.
    for (b, (backing, name)) in modeBackings.enumerated() {
        let buffer: DMABuffer
        do { buffer = try DMABuffer(length: bytes, backing: backing) } catch {
            for i in rows.indices { rows[i].notes.append("\(name): no buffer: \(error)") }
            continue
        }
        buffer.withUnsafeMutableBytes { p in
            for off in stride(from: 0, to: p.count, by: 4096) { p[off] = 1 }
        }
        for (i, mode) in modes.enumerated() {
            do {
                let dev = try AttachedDevice.open(address, mode: mode)
                defer { try? dev.close() }
                var maps: [Double] = [], unmaps: [Double] = []
                var how = "by address"
                for _ in 0..<rounds {
                    let t0 = bench_now_ns()
                    let m: DMAMapping
                    if backing == .memfd, let ioas = dev.space.ioas {
                        m = try ioas.mapFile(buffer, at: 0x1_0000_0000)
                        how = "IOMMU_IOAS_MAP_FILE"
                    } else {
                        m = try dev.space.map(buffer, at: 0x1_0000_0000)
                    }
                    let t1 = bench_now_ns()
                    try m.unmap()
                    let t2 = bench_now_ns()
                    maps.append(Double(t1 - t0))
                    unmaps.append(Double(t2 - t1))
                }
                rows[i].cells[b] = (median(maps), median(unmaps), how)
            } catch {
                rows[i].notes.append("\(name): \(error)")
            }
        }
    }
    return rows
}

func printDMAModes(_ rows: [ModeRow], bytes: Int, rounds: Int) {
    let gib = Double(bytes) / Double(1 << 30)
    let iommu = ProcessInfo.processInfo.environment["VFIOKIT_IOMMU"] ?? "?"
    print(String(format: "DMA modes (%@ IOMMU, TCG guest): map and unmap of %.2f GiB at one IOVA, ms per GiB, median of %d;",
                 iommu, gib, rounds))
    print("edu attached; the buffer touched first. memfd: IOMMU_IOAS_MAP_FILE in native iommufd; the container modes")
    print("have no MAP_FILE and map the memfd by its address (marked *)")
    var header = "mode".padding(toLength: 46, withPad: " ", startingAt: 0)
    for (_, name) in modeBackings { header += rightAligned(name + " map", 19) + rightAligned("unmap", 8) }
    print(header)
    for r in rows {
        var line = r.mode.description.padding(toLength: 46, withPad: " ", startingAt: 0)
        for (b, c) in r.cells.enumerated() {
            if let c {
                let mark = modeBackings[b].0 == .memfd && c.how == "by address" ? "*" : ""
                line += rightAligned(String(format: "%.1f", c.map / 1e6 / gib) + mark, 19)
                    + rightAligned(String(format: "%.1f", c.unmap / 1e6 / gib), 8)
            } else {
                line += rightAligned("-", 19) + rightAligned("-", 8)
            }
        }
        print(line)
        for n in r.notes { print("    " + n) }
    }
}
