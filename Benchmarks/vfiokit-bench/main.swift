// vfiokit-bench: VFIOKit's hot paths against the same work in plain C, in the
// test guest, on QEMU's edu device behind the emulated IOMMU; then the NVMe
// driver (Examples/NVMeDriver) against the kernel's nvme driver (NVMe.swift).
//
//   Scripts/bench.sh [--iommu intel|amd|virtio] [--json] [--no-nvme | --nvme-only] [--seconds N] [--rounds N]
//
// `vfiokit-bench --host` runs the IOVA allocator rows (Host.swift);
// `--dma-modes [--dma-bytes N] [--rounds N]` the DMA-mode map/unmap table (Modes.swift).
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
import Synchronization

struct Result {
    var name: String
    var rawNs: Double
    var swiftNs: Double
    var allocationsPerOp: Double
    var ratio: Double { swiftNs / rawNs }
    /// User-space instructions per operation (callgrind), C and Swift; nil when not counted.
    var rawInstructions: Double? = nil
    var swiftInstructions: Double? = nil
}

/// One hot path: the C loop and the VFIOKit loop, each running `n` operations
/// and returning the nanoseconds to charge (usually the wall time of the loop;
/// the open-to-attached cases time only the part up to attached).
struct Case {
    var name: String
    var iterations: Int
    /// Operations per loop when counting instructions under callgrind (slow: keep it small).
    var countIterations: Int
    var raw: (Int) -> UInt64
    var swift: (Int) -> UInt64
}

func wall(_ body: () -> Void) -> UInt64 {
    let t = bench_now_ns()
    body()
    return bench_now_ns() - t
}

func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

/// Alternates `raw` and `swift` for `rounds` rounds of `iterations` each.
func compare(_ c: Case, rounds: Int = 7) -> Result {
    _ = c.raw(c.iterations / 10 + 1)
    _ = c.swift(c.iterations / 10 + 1)  // warm up: first-touch faults, lazy binding
    var r: [Double] = [], s: [Double] = []
    var allocations: UInt64 = 0
    for _ in 0..<rounds {
        r.append(Double(c.raw(c.iterations)) / Double(c.iterations))
        let a = bench_allocations()
        s.append(Double(c.swift(c.iterations)) / Double(c.iterations))
        allocations += bench_allocations() - a
    }
    return Result(name: c.name, rawNs: median(r), swiftNs: median(s),
                  allocationsPerOp: Double(allocations) / Double(c.iterations * rounds))
}

/// Under callgrind: runs each side's loop for `countIterations` between a zero
/// and a dump of the counters ("raw:NAME", "swift:NAME"). The counts are read
/// back from the dump files by ``readCallgrindDumps(prefix:)``.
func count(_ c: Case) {
    _ = c.swift(2)  // warm up: lazy binding, first-touch faults, metadata
    _ = c.raw(2)
    let rawTag = strdup("raw:" + c.name)!, swiftTag = strdup("swift:" + c.name)!
    defer { free(rawTag); free(swiftTag) }
    bench_cg_zero()
    _ = c.raw(c.countIterations)
    bench_cg_dump(rawTag)
    bench_cg_zero()
    _ = c.swift(c.countIterations)
    bench_cg_dump(swiftTag)
}

/// Callgrind's part files PREFIX.1, PREFIX.2, ...: the "desc: Trigger: Client
/// Request: TAG" line and the "totals:" instruction count of each.
func readCallgrindDumps(prefix: String) -> [String: UInt64] {
    var out: [String: UInt64] = [:]
    var part = 1
    while let text = try? String(contentsOfFile: "\(prefix).\(part)", encoding: .utf8) {
        var tag: String?, total: UInt64?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("desc: Trigger: Client Request: ") {
                tag = String(line.dropFirst("desc: Trigger: Client Request: ".count))
            } else if line.hasPrefix("totals: ") {
                total = UInt64(line.dropFirst("totals: ".count).split(separator: " ").first ?? "")
            }
        }
        if let tag, let total { out[tag] = total }
        part += 1
    }
    return out
}

/// Counting mode (run under `valgrind --tool=callgrind --callgrind-out-file=PREFIX`
/// with VFIOKIT_CALLGRIND_OUT=PREFIX): after ``count(_:)`` ran for every case, writes
/// "name<TAB>C instr/op<TAB>Swift instr/op<TAB>n" lines to `file`.
func writeCounts(_ cases: [(name: String, countIterations: Int)], to file: String) throws {
    let prefix = try callgrindPrefix()
    let dumps = readCallgrindDumps(prefix: prefix)
    var lines = ""
    for c in cases {
        guard let r = dumps["raw:" + c.name], let s = dumps["swift:" + c.name] else {
            throw BenchError("no callgrind dump for \(c.name) under \(prefix).N")
        }
        let n = Double(c.countIterations)
        lines += "\(c.name)\t\(Double(r) / n)\t\(Double(s) / n)\t\(c.countIterations)\n"
    }
    try lines.write(toFile: file, atomically: false, encoding: .utf8)
}

func callgrindPrefix() throws -> String {
    guard bench_on_valgrind() != 0, let prefix = ProcessInfo.processInfo.environment["VFIOKIT_CALLGRIND_OUT"] else {
        throw BenchError("--count-out needs valgrind --tool=callgrind --callgrind-out-file=PREFIX and VFIOKIT_CALLGRIND_OUT=PREFIX")
    }
    return prefix
}

func readCounts(_ file: String) -> [String: (Double, Double)] {
    guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return [:] }
    var out: [String: (Double, Double)] = [:]
    for line in text.split(separator: "\n") {
        let f = line.split(separator: "\t")
        if f.count >= 3, let r = Double(f[1]), let s = Double(f[2]) { out[String(f[0])] = (r, s) }
    }
    return out
}

/// Runs `body` on the concurrency pool and blocks this thread until it returns.
func awaitBlocking(_ body: @escaping @Sendable () async -> UInt64) -> UInt64 {
    let result = Mutex<UInt64>(0)
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        let v = await body()
        result.withLock { $0 = v }
        done.signal()
    }
    done.wait()
    return result.withLock { $0 }
}

@inline(never) func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

/// Devices opened, bound and attached from several threads at once, sharing
/// one iommufd and one IOAS (the edu pair is one IOMMU group: its devices must
/// share a domain).
final class AttachJob: Sendable {
    let ctx: IOMMUFD
    let paths: [String]
    let ioas = Mutex<IOAS?>(nil)
    let devices: Mutex<[VFIODevice?]>
    let failures = Mutex<[String]>([])

    init(ctx: IOMMUFD, paths: [String]) {
        self.ctx = ctx
        self.paths = paths
        devices = Mutex(Array(repeating: nil, count: paths.count))
    }

    func attach(_ i: Int) {
        do throws(VFIOError) {
            guard let target = ioas.withLock({ $0 }) else { throw VFIOError.invalid(.step(.bind), "no IOAS", object: paths[i]) }
            let device = try VFIODevice.open(cdev: paths[i])
            try device.bind(to: ctx)
            try device.attach(to: target)
            devices.withLock { $0[i] = device }
        } catch {
            failures.withLock { $0.append("\(paths[i]): \(error)") }
        }
    }

    func release() {
        let all = devices.withLock { d in defer { d = Array(repeating: nil, count: d.count) }; return d }
        for case let device? in all { try! device.close() }
        if let target = ioas.withLock({ s in defer { s = nil }; return s }) { try! target.destroy() }
        let f = failures.withLock { $0 }
        precondition(f.isEmpty, "open to attached failed: \(f)")
    }
}

/// The hot paths of one open, bound and attached device: map + unmap, config
/// read, MMIO, the MSI round trip.
func deviceCases(cdev: String, ctx: IOMMUFD, countFile: String?, scale: Int) throws -> ([Result], [(String, Int)]) {
    var cases: [Case] = []
    let iommufd = ctx.fd.numberForHandoff
    let device = try VFIODevice.open(cdev: cdev)
    try device.bind(to: ctx)
    let ioas = try IOAS(ctx)
    try device.attach(to: ioas)
    let edu = try EduDevice(device)
    try edu.enableBusMaster()
    let buffer = try DMABuffer(length: 4096)
    let iova: IOVA = 0x100000

    // map + unmap of one 4 KiB page at a fixed IOVA.
    let ioasID = ioas.objectID
    let page = buffer.withUnsafeMutableBytes { $0.baseAddress! }
    cases.append(Case(name: "IOAS map+unmap 4 KiB (unsafeMap)", iterations: 2000 * scale, countIterations: 100, raw: { n in
        wall { precondition(bench_raw_map_unmap(iommufd, ioasID, page, 4096, iova.rawValue, Int32(n)) == 0) }
    }, swift: { n in
        wall {
            for _ in 0..<n {
                _ = try! ioas.unsafeMap(address: page, length: 4096, at: iova)
                _ = try! ioas.unmap(iova: iova, length: 4096)
            }
        }
    }))
    cases.append(Case(name: "IOAS map+unmap 4 KiB (DMABuffer)", iterations: 2000 * scale, countIterations: 100, raw: { n in
        wall { precondition(bench_raw_map_unmap(iommufd, ioasID, page, 4096, iova.rawValue, Int32(n)) == 0) }
    }, swift: { n in
        wall {
            for _ in 0..<n {
                let m = try! ioas.map(buffer, at: iova)
                try! m.unmap()
            }
        }
    }))

    // Config space: 4 bytes through the config region (pread on the device fd).
    let config = try device.configSpace()
    let deviceFD = device.fd.numberForHandoff
    cases.append(Case(name: "config read32", iterations: 2000 * scale, countIterations: 200, raw: { n in
        wall {
            var acc: UInt32 = 0
            precondition(bench_raw_config_read32(deviceFD, config.region.offset, 0, Int32(n), &acc) == 0)
            blackHole(acc)
        }
    }, swift: { n in
        wall {
            var acc: UInt32 = 0
            for _ in 0..<n { acc ^= try! config.read32(0) }
            blackHole(acc)
        }
    }))

    // MMIO: edu's liveness register (every access exits to QEMU under TCG).
    let bar = edu.bar0
    cases.append(Case(name: "MMIO load32", iterations: 20000 * scale, countIterations: 2000, raw: { n in
        wall { blackHole(bench_raw_mmio_read32(bar.base, 0x04, Int32(n))) }
    }, swift: { n in
        wall {
            var acc: UInt32 = 0
            for _ in 0..<n { acc ^= bar.load32(at: 0x04) }
            blackHole(acc)
        }
    }))
    cases.append(Case(name: "MMIO store32", iterations: 20000 * scale, countIterations: 2000, raw: { n in
        wall { bench_raw_mmio_write32(bar.base, 0x04, 0x5a5a_5a5a, Int32(n)) }
    }, swift: { n in
        wall { for _ in 0..<n { bar.store32(0x5a5a_5a5a, at: 0x04) } }
    }))

    // Interrupt round trip: raise through MMIO, wait for the MSI's eventfd, acknowledge.
    let msi = try device.interrupt(.msi)
    let efd = msi.eventFD.fd.numberForHandoff
    cases.append(Case(name: "IRQ raise + eventfd wait (MSI)", iterations: 500 * scale, countIterations: 50, raw: { n in
        wall { precondition(bench_raw_edu_irq_roundtrip(bar.base, efd, 0x1, Int32(n)) == 0) }
    }, swift: { n in
        wall {
            for _ in 0..<n {
                edu.raise(0x1)
                precondition((try? msi.wait(timeout: .seconds(1))) != nil, "no interrupt")
                edu.acknowledge(0x1)
            }
        }
    }))

    // The same round trip awaited through Swift concurrency (EventFD.interrupts():
    // a dedicated thread polls and yields to the awaiting task) against the same C loop.
    cases.append(Case(name: "IRQ raise + async wait (MSI)", iterations: 500 * scale, countIterations: 200, raw: { n in
        wall { precondition(bench_raw_edu_irq_roundtrip(bar.base, efd, 0x1, Int32(n)) == 0) }
    }, swift: { n in
        awaitBlocking {
            var elapsed: UInt64 = 0
            do {
                var interrupts = msi.eventFD.interrupts().makeAsyncIterator()
                let t = bench_now_ns()
                for _ in 0..<n {
                    edu.raise(0x1)
                    let count = await interrupts.next()
                    precondition(count != nil, "no interrupt")
                    edu.acknowledge(0x1)
                }
                elapsed = bench_now_ns() - t
            }
            // The dropped iterator's thread stops asynchronously (woken through its
            // second eventfd): give it time to leave before the C loop polls the
            // same eventfd, or it may still read the C loop's first interrupt.
            // Under valgrind threads run one at a time and slowly: wait longer.
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return elapsed
        }
    }))

    // The same through EventFD.withInterrupts(_:): one cancellation handler for the loop.
    cases.append(Case(name: "IRQ raise + withInterrupts() (MSI)", iterations: 500 * scale, countIterations: 200, raw: { n in
        wall { precondition(bench_raw_edu_irq_roundtrip(bar.base, efd, 0x1, Int32(n)) == 0) }
    }, swift: { n in
        awaitBlocking {
            let elapsed = await msi.eventFD.withInterrupts { sequence in
                var interrupts = sequence.makeAsyncIterator()
                let t = bench_now_ns()
                for _ in 0..<n {
                    edu.raise(0x1)
                    let count = await interrupts.next()
                    precondition(count != nil, "no interrupt")
                    edu.acknowledge(0x1)
                }
                return bench_now_ns() - t
            }
            // As above: the stopped iterator's thread leaves asynchronously.
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return elapsed
        }
    }))

    // The same round trip through an InterruptExecutor (EventFD.interrupts(on:)): the task
    // prefers the executor, whose one thread polls the eventfd and resumes the task itself
    // (no hand-off to another thread), against the same C loop.
    let irqExecutor = try InterruptExecutor()
    cases.append(Case(name: "IRQ raise + async wait (MSI, executor)", iterations: 500 * scale, countIterations: 200,
                      raw: { n in
        wall { precondition(bench_raw_edu_irq_roundtrip(bar.base, efd, 0x1, Int32(n)) == 0) }
    }, swift: { n in
        awaitBlocking {
            let elapsed = await withTaskExecutorPreference(irqExecutor) { () -> UInt64 in
                var interrupts = msi.eventFD.interrupts(on: irqExecutor).makeAsyncIterator()
                let t = bench_now_ns()
                for _ in 0..<n {
                    edu.raise(0x1)
                    let count = await interrupts.next()
                    precondition(count != nil, "no interrupt")
                    edu.acknowledge(0x1)
                }
                return bench_now_ns() - t
            }
            // The dropped iterator leaves the executor's poll set before its thread polls
            // again; wait as the row above does, so no stale poller can take the C loop's count.
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return elapsed
        }
    }))

    // The same through EventFD.withInterrupts(on:_:): one cancellation handler for the whole
    // loop instead of one per next() (each costs preference lookups under the task's lock).
    cases.append(Case(name: "IRQ raise + withInterrupts(on:) (MSI)", iterations: 500 * scale, countIterations: 200,
                      raw: { n in
        wall { precondition(bench_raw_edu_irq_roundtrip(bar.base, efd, 0x1, Int32(n)) == 0) }
    }, swift: { n in
        awaitBlocking {
            let elapsed = await withTaskExecutorPreference(irqExecutor) { () -> UInt64 in
                await msi.eventFD.withInterrupts(on: irqExecutor) { sequence in
                    var interrupts = sequence.makeAsyncIterator()
                    let t = bench_now_ns()
                    for _ in 0..<n {
                        edu.raise(0x1)
                        let count = await interrupts.next()
                        precondition(count != nil, "no interrupt")
                        edu.acknowledge(0x1)
                    }
                    return bench_now_ns() - t
                }
            }
            // As above: the scope's iterator leaves the poll set before the C loop polls.
            usleep(bench_on_valgrind() != 0 ? 1_000_000 : 20_000)
            return elapsed
        }
    }))

    var results: [Result] = []
    if countFile != nil { cases.forEach(count) } else { results = cases.map { compare($0) } }
    try msi.close()
    return (results, cases.map { ($0.name, $0.countIterations) })

}

/// The hot paths, set up in the guest: the edu device through iommufd (and the
/// type1 container after it), and the edu pair for the parallel open.
func run(counting countFile: String?, scale: Int) throws -> [Result] {
    let bdf = try Guest.requireEdu()
    let cdev = "/dev/vfio/devices/" + (try Guest.bindToVFIO(bdf))
    var boundPair: [String] = []
    defer {
        for b in boundPair { try? Guest.unbind(b) }
        try? Guest.unbind(bdf)
    }
    // The edu pair shares a group (with the bridge): bound to vfio-pci, all three
    // edus can be opened at once through their cdevs.
    var cdevs = [cdev]
    if let a = Guest.eduPairA, let b = Guest.eduPairB {
        for p in [a, b] {
            cdevs.append("/dev/vfio/devices/" + (try Guest.bindToVFIO(p)))
            boundPair.append(p)
        }
    }

    let ctx = try IOMMUFD()
    var cases: [Case] = []

    // Device open to attached (cdev open, bind, IOAS alloc, attach); each one
    // is torn down again (close, IOAS destroy) outside the timed part.
    let iommufd = ctx.fd.numberForHandoff
    cases.append(Case(name: "open to attached, 1 edu", iterations: 20 * scale, countIterations: 5, raw: { n in
        let r = bench_raw_open_attach(cdev, iommufd, Int32(n))
        precondition(r >= 0, "C open to attached: errno \(-r)")
        return UInt64(r)
    }, swift: { n in
        var total: UInt64 = 0
        for _ in 0..<n {
            let t = bench_now_ns()
            let device = try! VFIODevice.open(cdev: cdev)
            try! device.bind(to: ctx)
            let ioas = try! IOAS(ctx)
            try! device.attach(to: ioas)
            total += bench_now_ns() - t
            try! device.close()
            try! ioas.destroy()
        }
        return total
    }))
    if cdevs.count == 3 {
        let job = AttachJob(ctx: ctx, paths: cdevs)
        let cPaths: [UnsafePointer<CChar>?] = cdevs.map { UnsafePointer(strdup($0)) }
        cases.append(Case(name: "open to attached, 3 edus parallel", iterations: 10 * scale, countIterations: 3, raw: { n in
            let r = cPaths.withUnsafeBufferPointer { p in
                bench_raw_open_attach_parallel(p.baseAddress, Int32(p.count), iommufd, Int32(n))
            }
            precondition(r >= 0, "C parallel open to attached: errno \(-r)")
            return UInt64(r)
        }, swift: { n in
            var total: UInt64 = 0
            for _ in 0..<n {
                let t = bench_now_ns()
                let target = try! IOAS(ctx)
                job.ioas.withLock { $0 = target }
                let r = bench_run_threads(Int32(cdevs.count), { ctx, i in
                    // Safety: ctx is `job`, kept alive below until the threads are joined.
                    Unmanaged<AttachJob>.fromOpaque(ctx!).takeUnretainedValue().attach(Int(i))
                }, Unmanaged.passUnretained(job).toOpaque())
                total += bench_now_ns() - t
                precondition(r == 0, "pthread_create: errno \(-r)")
                job.release()
            }
            return withExtendedLifetime(job) { total }
        }))
    }

    // A cdev binds once at a time (the kernel refuses a second bind with EINVAL):
    // run the open cases before the device below stays open.
    var results: [Result] = []
    if countFile != nil { _ = try callgrindPrefix(); cases.forEach(count) } else { results = cases.map { compare($0) } }
    var done = cases.map { ($0.name, $0.countIterations) }
    cases = []

    // The device's own hot paths; everything they hold (the device, its mapped
    // BAR, the IOAS) is gone when this returns, so the group is free for type1.
    let (more, names) = try deviceCases(cdev: cdev, ctx: ctx, countFile: countFile, scale: scale)
    results += more
    done += names
    try ctx.close()

    // type1: the legacy container, the same map + unmap.
    let group = try VFIOGroup(number: Int(Guest.iommuGroup(of: bdf) ?? "") ?? -1)
    let container = try VFIOContainer()
    try group.setContainer(container)
    try container.setIOMMU(.type1v2)
    let containerFD = container.fd.numberForHandoff
    let buffer = try DMABuffer(length: 4096)
    let page = buffer.withUnsafeMutableBytes { $0.baseAddress! }
    let iova: IOVA = 0x100000
    let type1 = Case(name: "type1 map+unmap 4 KiB (unsafeMapDMA)", iterations: 2000 * scale, countIterations: 100, raw: { n in
        wall { precondition(bench_raw_type1_map_unmap(containerFD, page, 4096, iova.rawValue, Int32(n)) == 0) }
    }, swift: { n in
        wall {
            for _ in 0..<n {
                try! container.unsafeMapDMA(address: page, length: 4096, at: iova)
                _ = try! container.unmapDMA(iova: iova, length: 4096)
            }
        }
    })
    if let countFile {
        count(type1)
        try writeCounts(done + [(type1.name, type1.countIterations)], to: countFile)
    } else {
        results.append(compare(type1))
    }
    try group.unsetContainer()
    return results
}

func printHotPaths(_ results: [Result], iommu: String) {
    print("vfiokit-bench (\(iommu) IOMMU, TCG guest): median ns per operation, 7 alternating rounds")
    print("instr: user-space instructions per operation, C and VFIOKit, counted by callgrind in the same guest boot")
    print("(a run of its own; - = not counted); extra = VFIOKit - C. The open rows' counts include the teardown")
    print("(close, IOAS destroy) on both sides, their times do not; the IRQ row counts every thread.")
    print("operation".padding(toLength: 38, withPad: " ", startingAt: 0)
          + "      raw C    VFIOKit   ratio  allocs/op   C instr  VFIOKit instr   extra  instr ratio")
    for r in results {
        let instr: String
        if let c = r.rawInstructions, let s = r.swiftInstructions {
            instr = String(format: " %9.1f %14.1f %7.0f %12.2f", c, s, s - c, s / c)
        } else {
            instr = " " + rightAligned("-", 9) + " " + rightAligned("-", 14) + " " + rightAligned("-", 7) + " " + rightAligned("-", 12)
        }
        print(r.name.padding(toLength: 38, withPad: " ", startingAt: 0)
            + String(format: " %10.0f %10.0f %7.3f %10.2f", r.rawNs, r.swiftNs, r.ratio, r.allocationsPerOp) + instr)
    }
}

func rightAligned(_ s: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - s.count)) + s
}

func option(_ name: String) -> String? {
    let args = CommandLine.arguments
    return args.firstIndex(of: name).flatMap { i in i + 1 < args.count ? args[i + 1] : nil }
}

do {
    let args = CommandLine.arguments
    let scale = Int(ProcessInfo.processInfo.environment["VFIOKIT_BENCH_SCALE"] ?? "1") ?? 1
    let countOut = option("--count-out")
    if args.contains("--host-irq") {
        try runHostIRQ(countFile: countOut, countsFrom: option("--counts"))
        exit(0)
    }
    if args.contains("--host") {
        let rows = try runHost(countFile: countOut, countsFrom: option("--counts"), scale: scale)
        if countOut == nil { printHost(rows) }
        exit(0)
    }
    if args.contains("--dma-modes") {
        let bytes = option("--dma-bytes").flatMap { Int($0) } ?? 1 << 30
        let rounds = option("--rounds").flatMap { Int($0) } ?? 3
        printDMAModes(try runDMAModes(bytes: bytes, rounds: max(1, rounds)), bytes: bytes, rounds: max(1, rounds))
        exit(0)
    }
    if let countOut {
        _ = try run(counting: countOut, scale: scale)
        exit(0)
    }
    let seconds = option("--seconds").flatMap { Int($0) } ?? 5
    var results = args.contains("--nvme-only") ? [] : try run(counting: nil, scale: scale)
    let counts = option("--counts").map(readCounts) ?? [:]
    for i in results.indices {
        if let c = counts[results[i].name] { (results[i].rawInstructions, results[i].swiftInstructions) = c }
    }
    let rounds = option("--rounds").flatMap { Int($0) } ?? 3
    let nvme = args.contains("--no-nvme") ? [] : try runNVMe(seconds: seconds, rounds: max(1, rounds))
    if args.contains("--json") {
        let rows = results.map {
            "{\"name\":\"\($0.name)\",\"raw_ns\":\(Int($0.rawNs)),\"vfiokit_ns\":\(Int($0.swiftNs)),"
                + "\"ratio\":\(String(format: "%.3f", $0.ratio)),\"allocations_per_op\":\($0.allocationsPerOp),"
                + "\"raw_instructions\":\($0.rawInstructions.map { String(format: "%.1f", $0) } ?? "null"),"
                + "\"vfiokit_instructions\":\($0.swiftInstructions.map { String(format: "%.1f", $0) } ?? "null")}"
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
        if !results.isEmpty { printHotPaths(results, iommu: iommu) }
        if !nvme.isEmpty { printNVMe(nvme) }
    }
} catch {
    FileHandle.standardError.write(Data("vfiokit-bench: \(error)\n".utf8))
    exit(1)
}
