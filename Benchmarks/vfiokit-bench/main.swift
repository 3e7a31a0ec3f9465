// vfiokit-bench: VFIOKit's hot paths against the same work in plain C, in the
// test guest, on QEMU's edu device behind the emulated IOMMU; then the NVMe
// driver (Examples/NVMeDriver) against the kernel's nvme driver (NVMe.swift).
//
//   Scripts/bench.sh [--iommu intel|amd|virtio] [--json] [--no-nvme | --nvme-only] [--seconds N] [--rounds N]
//
// For each operation it runs the C loop and the VFIOKit loop in alternating
// rounds and prints the median time per operation of each, their ratio, and
// the allocations the VFIOKit loop made (counted by interposing malloc; the hot
// paths are designed to make none). Numbers, not assertions: TCG timing is noisy.

import CBenchSupport
import CVFIO
import Foundation
import VFIOKit
import VFIOKitTestSupport

struct Result {
    var name: String
    var rawNs: Double
    var swiftNs: Double
    var allocationsPerOp: Double
    var ratio: Double { swiftNs / rawNs }
}

func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

/// Alternates `raw` and `swift` for `rounds` rounds of `iterations` each.
func compare(_ name: String, iterations: Int, rounds: Int = 7, raw: (Int) -> Void, swift: (Int) -> Void) -> Result {
    raw(iterations / 10 + 1)
    swift(iterations / 10 + 1)  // warm up: first-touch faults, lazy binding
    var r: [Double] = [], s: [Double] = []
    var allocations: UInt64 = 0
    for _ in 0..<rounds {
        var t = bench_now_ns()
        raw(iterations)
        r.append(Double(bench_now_ns() - t) / Double(iterations))
        let a = bench_allocations()
        t = bench_now_ns()
        swift(iterations)
        s.append(Double(bench_now_ns() - t) / Double(iterations))
        allocations += bench_allocations() - a
    }
    return Result(name: name, rawNs: median(r), swiftNs: median(s),
                  allocationsPerOp: Double(allocations) / Double(iterations * rounds))
}

@inline(never) func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

func run() throws -> [Result] {
    let bdf = try Guest.requireEdu()
    _ = try Guest.bindToVFIO(bdf)
    defer { try? Guest.unbind(bdf) }

    let ctx = try IOMMUFD()
    let device = try VFIODevice.open(try PCIAddress(parsing: bdf))
    try device.bind(to: ctx)
    let ioas = try IOAS(ctx)
    try device.attach(to: ioas)
    let edu = try EduDevice(device)
    try edu.enableBusMaster()
    let buffer = try DMABuffer(length: 4096)
    let iova: IOVA = 0x100000
    var results: [Result] = []
    let scale = Int(ProcessInfo.processInfo.environment["VFIOKIT_BENCH_SCALE"] ?? "1") ?? 1

    // map + unmap of one 4 KiB page at a fixed IOVA.
    let ioasID = ioas.objectID, iommufd = ctx.fd.numberForHandoff
    let page = buffer.withUnsafeMutableBytes { $0.baseAddress! }
    results.append(compare("IOAS map+unmap 4 KiB (unsafeMap)", iterations: 2000 * scale, raw: { n in
        precondition(bench_raw_map_unmap(iommufd, ioasID, page, 4096, iova.rawValue, Int32(n)) == 0)
    }, swift: { n in
        for _ in 0..<n {
            _ = try! ioas.unsafeMap(address: page, length: 4096, at: iova)
            _ = try! ioas.unmap(iova: iova, length: 4096)
        }
    }))
    results.append(compare("IOAS map+unmap 4 KiB (DMABuffer)", iterations: 2000 * scale, raw: { n in
        precondition(bench_raw_map_unmap(iommufd, ioasID, page, 4096, iova.rawValue, Int32(n)) == 0)
    }, swift: { n in
        for _ in 0..<n {
            let m = try! ioas.map(buffer, at: iova)
            try! m.unmap()
        }
    }))

    // MMIO: edu's liveness register (every access exits to QEMU under TCG).
    let bar = edu.bar0
    results.append(compare("MMIO load32", iterations: 20000 * scale, raw: { n in
        blackHole(bench_raw_mmio_read32(bar.base, 0x04, Int32(n)))
    }, swift: { n in
        var acc: UInt32 = 0
        for _ in 0..<n { acc ^= bar.load32(at: 0x04) }
        blackHole(acc)
    }))
    results.append(compare("MMIO store32", iterations: 20000 * scale, raw: { n in
        bench_raw_mmio_write32(bar.base, 0x04, 0x5a5a_5a5a, Int32(n))
    }, swift: { n in
        for _ in 0..<n { bar.store32(0x5a5a_5a5a, at: 0x04) }
    }))

    // Interrupt round trip: raise through MMIO, wait for the MSI's eventfd, acknowledge.
    let msi = try device.interrupt(.msi)
    let efd = msi.eventFD.fd.numberForHandoff
    results.append(compare("IRQ raise + eventfd wait (MSI)", iterations: 500 * scale, raw: { n in
        precondition(bench_raw_edu_irq_roundtrip(bar.base, efd, 0x1, Int32(n)) == 0)
    }, swift: { n in
        for _ in 0..<n {
            edu.raise(0x1)
            precondition((try? msi.wait(timeout: .seconds(1))) != nil, "no interrupt")
            edu.acknowledge(0x1)
        }
    }))
    try msi.close()
    return results
}

do {
    let args = CommandLine.arguments
    let seconds = args.firstIndex(of: "--seconds").flatMap { i in i + 1 < args.count ? Int(args[i + 1]) : nil } ?? 5
    let results = args.contains("--nvme-only") ? [] : try run()
    let rounds = args.firstIndex(of: "--rounds").flatMap { i in i + 1 < args.count ? Int(args[i + 1]) : nil } ?? 3
    let nvme = args.contains("--no-nvme") ? [] : try runNVMe(seconds: seconds, rounds: max(1, rounds))
    if args.contains("--json") {
        let rows = results.map {
            "{\"name\":\"\($0.name)\",\"raw_ns\":\(Int($0.rawNs)),\"vfiokit_ns\":\(Int($0.swiftNs)),"
                + "\"ratio\":\(String(format: "%.3f", $0.ratio)),\"allocations_per_op\":\($0.allocationsPerOp)}"
        }
        let nvmeRows = nvme.map { r in
            func side(_ s: Side) -> String {
                String(format: "{\"iops\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f}", s.iops, s.p50us, s.p99us, s.meanus)
            }
            return "{\"name\":\"\(r.name)\",\"bs\":\(r.bs),\"qd\":\(r.qd),\"poll\":\(r.poll),\"kernel\":\(side(r.kernel)),"
                + "\"driver\":\(side(r.driver)),\"ratio\":\(String(format: "%.3f", r.ratio)),\"allocations_per_io\":\(r.allocationsPerIO)}"
        }
        print("{\"hot_paths\":[" + rows.joined(separator: ",") + "],\"nvme\":[" + nvmeRows.joined(separator: ",") + "]}")
    } else {
        let iommu = ProcessInfo.processInfo.environment["VFIOKIT_IOMMU"] ?? "?"
        print("vfiokit-bench (\(iommu) IOMMU, TCG guest): median ns per operation, 7 alternating rounds")
        print("operation".padding(toLength: 34, withPad: " ", startingAt: 0) + "      raw C    VFIOKit   ratio  allocs/op")
        for r in results {
            print(r.name.padding(toLength: 34, withPad: " ", startingAt: 0)
                + String(format: " %10.0f %10.0f %7.3f %10.2f", r.rawNs, r.swiftNs, r.ratio, r.allocationsPerOp))
        }
        if !nvme.isEmpty { printNVMe(nvme) }
    }
} catch {
    FileHandle.standardError.write(Data("vfiokit-bench: \(error)\n".utf8))
    exit(1)
}
