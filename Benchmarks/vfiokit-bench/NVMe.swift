// The NVMe rows: the Swift driver (Examples/NVMeDriver) against the kernel's
// nvme driver on the same controller, driven by fio (io_uring, O_DIRECT).
// Random reads of 4 KiB and 512 B at queue depth 1 and 32, completions by
// interrupt and by polling (the kernel polls with io_uring's IOPOLL: boot
// with nvme.poll_queues=1, as Scripts/bench.sh does).

import CBenchSupport
import Foundation
import NVMeDriver
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

struct NVMeCase: CustomStringConvertible {
    var blockSize: Int
    var queueDepth: Int
    var poll: Bool
    var description: String {
        "NVMe randread \(blockSize == 4096 ? "4 KiB" : "\(blockSize) B") QD\(queueDepth) \(poll ? "polling" : "interrupts")"
    }
}

struct Side: Codable {
    var iops: Double
    var p50us: Double
    var p99us: Double
    var meanus: Double
}

struct NVMeRow: Codable {
    var name: String
    var bs: Int
    var qd: Int
    var poll: Bool
    var kernel: Side
    var driver: Side
    var allocationsPerIO: Double
    var ratio: Double { driver.iops / kernel.iops }
}

/// Runs a program with posix_spawn (Foundation's Process needs a socketpair the
/// guest cannot make), stdout into a file; returns (status, stdout).
func spawn(_ exe: String, _ args: [String]) throws -> (Int32, Data) {
    let out = NSTemporaryDirectory() + "bench-\(UUID().uuidString).out"
    defer { unlink(out) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, exe, &actions, nil, argv, environ)
    guard rc == 0 else { throw BenchError("posix_spawn \(exe): \(rc)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return ((status >> 8) & 0xff, (try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data())
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

/// fio on the block device: random reads, O_DIRECT, io_uring (IOPOLL when polling). `--thread`:
/// the guest kernel has no SysV shared memory, which fio's job processes use.
func kernelSide(_ c: NVMeCase, block: String, seconds: Int) throws -> Side {
    var args = ["--name=kernel", "--thread=1", "--filename=\(block)", "--direct=1", "--rw=randread", "--bs=\(c.blockSize)",
                "--iodepth=\(c.queueDepth)", "--ioengine=io_uring", "--fixedbufs=1", "--registerfiles=1",
                "--time_based=1", "--runtime=\(seconds)", "--ramp_time=1", "--norandommap=1", "--randrepeat=0",
                "--lat_percentiles=1", "--output-format=json"]
    if c.poll { args.append("--hipri=1") }
    let (status, out) = try spawn("/usr/bin/fio", args)
    guard status == 0, let j = try JSONSerialization.jsonObject(with: out) as? [String: Any],
          let read = ((j["jobs"] as? [[String: Any]])?.first)?["read"] as? [String: Any],
          let iops = read["iops"] as? Double, let lat = read["lat_ns"] as? [String: Any],
          let mean = lat["mean"] as? Double, let pct = lat["percentile"] as? [String: Any],
          let p50 = pct["50.000000"] as? Double, let p99 = pct["99.000000"] as? Double
    else {
        throw BenchError("fio failed (status \(status)): \(String(decoding: out.prefix(2000), as: UTF8.self))")
    }
    return Side(iops: iops, p50us: p50 / 1000, p99us: p99 / 1000, meanus: mean / 1000)
}

/// The Swift driver: the same workload through NVMeDriver's perf loop; the
/// allocations between the first doorbell and the last completion, per I/O.
func driverSide(_ c: NVMeCase, bdf: String, seconds: Int) throws -> (Side, Double) {
    let controller = try NVMeController(address: bdf, options: .init(interrupts: !c.poll, queueDepth: 64))
    defer { try? controller.close() }
    let options = PerfOptions(queueDepth: c.queueDepth, blockSize: c.blockSize, duration: .seconds(1))
    _ = try runPerf(controller, options: options)  // warm-up, like fio's ramp_time
    var run = options
    run.duration = .seconds(seconds)
    var first: UInt64 = 0, last: UInt64 = 0
    let r = try runPerf(controller, options: run, steadyState: { begin in
        if begin { first = bench_allocations() } else { last = bench_allocations() }
    })
    let l = r.latencyMicroseconds
    return (Side(iops: r.iops, p50us: l.p50, p99us: l.p99, meanus: l.mean), Double(last - first) / Double(r.ios))
}

/// `rounds` rounds, each every case on the kernel's driver, then every case
/// on ours (binding the controller back and forth once per round); each
/// side's numbers are the median over the rounds, so a burst of host load
/// in one round does not decide a row.
func runNVMe(seconds: Int, rounds: Int) throws -> [NVMeRow] {
    guard let bdf = ProcessInfo.processInfo.environment["VFIOKIT_NVME"], !bdf.isEmpty,
          let block = ProcessInfo.processInfo.environment["VFIOKIT_NVME_BLOCK"], !block.isEmpty
    else { throw BenchError("VFIOKIT_NVME / VFIOKIT_NVME_BLOCK not set: run in the guest (Scripts/bench.sh)") }
    let cases = [4096, 512].flatMap { bs in [1, 32].flatMap { qd in [false, true].map { NVMeCase(blockSize: bs, queueDepth: qd, poll: $0) } } }
    let host = PCIHost()
    let address = try PCIAddress(parsing: bdf)
    var kernel = [[Side]](repeating: [], count: cases.count)
    var driver = [[Side]](repeating: [], count: cases.count)
    var allocations = [Double](repeating: 0, count: cases.count)
    for round in 1...rounds {
        for (i, c) in cases.enumerated() {
            FileHandle.standardError.write(Data("round \(round)/\(rounds) kernel: \(c)\n".utf8))
            kernel[i].append(try kernelSide(c, block: block, seconds: seconds))
        }
        _ = try host.bind(address)
        do {
            for (i, c) in cases.enumerated() {
                FileHandle.standardError.write(Data("round \(round)/\(rounds) driver: \(c)\n".utf8))
                let (side, a) = try driverSide(c, bdf: bdf, seconds: seconds)
                driver[i].append(side)
                allocations[i] = max(allocations[i], a)
            }
        } catch {
            _ = try? host.unbind(address, restore: true)
            throw error
        }
        _ = try host.unbind(address, restore: true)
        // The kernel's driver probes asynchronously: wait for the block device.
        for _ in 0..<200 where access(block, R_OK) != 0 { usleep(50_000) }
    }
    return cases.enumerated().map { i, c in
        NVMeRow(name: c.description, bs: c.blockSize, qd: c.queueDepth, poll: c.poll, kernel: medianSide(kernel[i]),
                driver: medianSide(driver[i]), allocationsPerIO: allocations[i])
    }
}

/// The round with the median IOPS.
func medianSide(_ xs: [Side]) -> Side { xs.sorted { $0.iops < $1.iops }[xs.count / 2] }

func printNVMe(_ rows: [NVMeRow]) {
    print("")
    print("NVMe (null-backed controller): the Swift driver against the kernel's nvme driver (fio, io_uring, O_DIRECT);")
    print("median of the rounds; allocations counted between the first doorbell and the last completion")
    print("case".padding(toLength: 36, withPad: " ", startingAt: 0)
          + "  kernel IOPS  driver IOPS   ratio  kernel p50/p99 us  driver p50/p99 us  allocs/IO")
    for r in rows {
        print(r.name.padding(toLength: 36, withPad: " ", startingAt: 0)
              + String(format: " %12.0f %12.0f %7.3f %9.1f/%-8.1f %9.1f/%-8.1f %9.4f", r.kernel.iops, r.driver.iops, r.ratio,
                       r.kernel.p50us, r.kernel.p99us, r.driver.p50us, r.driver.p99us, r.allocationsPerIO))
    }
}
