import VFIOKit

/// Latencies in nanoseconds, in log-linear buckets (32 per power of two,
/// about 3% resolution), preallocated: recording allocates nothing.
public final class LatencyHistogram: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the perf loop).
    static let subBits = 5
    static let bucketCount = 1920
    private let counts: UnsafeMutablePointer<UInt64>
    // @exclusivity(unchecked): one thread records (see above); without it each
    // record() pays four runtime access checks.
    @exclusivity(unchecked) public private(set) var count: UInt64 = 0
    @exclusivity(unchecked) public private(set) var sum: UInt64 = 0
    @exclusivity(unchecked) public private(set) var min: UInt64 = .max
    @exclusivity(unchecked) public private(set) var max: UInt64 = 0

    public init() {
        counts = .allocate(capacity: Self.bucketCount)
        counts.initialize(repeating: 0, count: Self.bucketCount)
    }

    deinit { counts.deallocate() }

    @inline(__always)
    static func bucket(_ v: UInt64) -> Int {
        if v < 64 { return Int(v) }
        let e = 63 - v.leadingZeroBitCount
        let shift = e - subBits
        return shift * 32 + Int(v >> UInt64(shift))
    }

    /// The smallest value that lands in bucket `i`, and the bucket's width.
    static func range(_ i: Int) -> (lower: UInt64, width: UInt64) {
        if i < 64 { return (UInt64(i), 1) }
        let shift = i / 32 - 1
        return (UInt64(i % 32 + 32) << UInt64(shift), 1 << UInt64(shift))
    }

    @inline(__always)
    public func record(_ ns: UInt64) {
        // Safety: bucket(_:) is below bucketCount for every UInt64 (at most 1887).
        counts[Self.bucket(ns)] &+= 1
        count &+= 1
        sum &+= ns
        if ns < min { min = ns }
        if ns > max { max = ns }
    }

    /// The value at quantile `q` (0...1): the middle of its bucket, clamped to min...max.
    public func percentile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, UInt64((q * Double(count)).rounded(.up)))
        var seen: UInt64 = 0
        for i in 0..<Self.bucketCount {
            seen += counts[i]
            if seen >= rank {
                let r = Self.range(i)
                return Swift.min(Swift.max(r.lower + r.width / 2, min), max)
            }
        }
        return max
    }

    public var mean: Double { count == 0 ? 0 : Double(sum) / Double(count) }
}

/// What ``runPerf(_:options:stop:progress:)`` does.
public struct PerfOptions: Sendable {
    /// Commands in flight.
    public var queueDepth: Int
    /// Bytes per command (a multiple of the namespace's block size).
    public var blockSize: Int
    public var duration: Duration
    /// Random writes instead of random reads.
    public var write: Bool
    public var namespace: UInt32
    /// Which I/O queue (index) to drive.
    public var queue: Int
    /// The logical blocks to spread the I/O over (nil: the whole namespace).
    public var region: Range<UInt64>?
    /// Seed of the random block addresses.
    public var seed: UInt64
    /// How often `progress` is called.
    public var progressInterval: Duration

    public init(queueDepth: Int = 1, blockSize: Int = 4096, duration: Duration = .seconds(5), write: Bool = false,
                namespace: UInt32 = 1, queue: Int = 0, region: Range<UInt64>? = nil, seed: UInt64 = 0x9E37_79B9_7F4A_7C15,
                progressInterval: Duration = .seconds(1))
    {
        self.region = region
        self.queueDepth = queueDepth
        self.blockSize = blockSize
        self.duration = duration
        self.write = write
        self.namespace = namespace
        self.queue = queue
        self.seed = seed
        self.progressInterval = progressInterval
    }
}

/// A live progress sample: totals so far and the rate since the last sample.
public struct PerfProgress: Sendable {
    public var elapsed: Duration
    public var ios: UInt64
    public var intervalIOPS: Double
    public var intervalMBps: Double
}

/// The result of a perf run.
public struct PerfReport: Sendable, Codable, Equatable {
    public var queueDepth: Int
    public var blockSize: Int
    public var write: Bool
    public var interrupts: Bool
    public var mode: String
    public var seconds: Double
    public var ios: UInt64
    public var iops: Double
    /// Decimal megabytes per second (10^6 bytes), as fio prints MB/s.
    public var megabytesPerSecond: Double
    public var latencyMicroseconds: Latency
    /// Waits ended by an interrupt (0 when polling).
    public var interruptWakeups: UInt64

    public struct Latency: Sendable, Codable, Equatable {
        public var min: Double, mean: Double, p50: Double, p90: Double, p99: Double, p999: Double, max: Double
    }
}

/// Random reads (or writes) at `options.queueDepth` on one I/O queue for
/// `options.duration`: submit, reap, resubmit, with the doorbell rung once
/// per batch. The loop allocates nothing (`vfiokit-bench` counts it), except
/// inside `progress`. `stop` is checked between batches (a signal handler's flag).
///
/// `steadyState(true)` runs right before the first doorbell and
/// `steadyState(false)` right after the last completion: a benchmark counts
/// allocations between the two.
public func runPerf(_ controller: NVMeController, options: PerfOptions, histogram: LatencyHistogram = LatencyHistogram(),
                    stop: () -> Bool = { false }, steadyState: (Bool) -> Void = { _ in },
                    progress: ((PerfProgress) -> Void)? = nil) throws(NVMeError) -> PerfReport
{
    let ns = try controller.namespace(options.namespace)
    guard options.queue >= 0, options.queue < controller.ioQueues.count else {
        throw NVMeError(.invalidArgument, "no I/O queue \(options.queue) (the controller has \(controller.ioQueues.count))",
                        device: controller.address)
    }
    let q = controller.queue(options.queue)
    let bs = options.blockSize
    guard bs >= ns.blockSize, bs % ns.blockSize == 0, bs <= q.maxTransferBytes else {
        throw NVMeError(.invalidArgument, "block size \(bs) must be a multiple of the namespace's \(ns.blockSize)-byte blocks "
                            + "and at most \(q.maxTransferBytes)", device: controller.address)
    }
    guard options.queueDepth >= 1, options.queueDepth <= q.depth else {
        throw NVMeError(.invalidArgument, "queue depth \(options.queueDepth) must be 1...\(q.depth)", device: controller.address,
                        hint: "open the controller with a deeper queue (NVMeController.Options.queueDepth)")
    }
    let blocks = bs / ns.blockSize
    let region = options.region ?? 0..<ns.size
    guard region.upperBound <= ns.size else {
        throw NVMeError(.invalidArgument, "blocks \(region.lowerBound)..<\(region.upperBound) are outside namespace \(ns.id) "
                            + "(\(ns.size) blocks)", device: controller.address)
    }
    let first = region.lowerBound
    let span = UInt64(region.count) / UInt64(blocks)
    guard span > 0 else { throw NVMeError(.invalidArgument, "the region is smaller than one I/O", device: controller.address) }
    let stride = (bs + 4095) / 4096 * 4096
    let buffer = try controller.makeBuffer(bytes: stride * options.queueDepth)
    if options.write {
        // Something other than zeros, so writes carry data.
        for i in 0..<buffer.count { buffer.bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
    }
    let op: IOOpcode = options.write ? .write : .read

    let loop = PerfLoop(queue: q, op: op, namespace: ns.id, first: first, span: span, blocks: blocks, bytes: bs,
                        buffer: buffer, stride: stride, seed: options.seed, histogram: histogram)
    let durationNs = options.duration.nanoseconds
    let intervalNs = max(options.progressInterval.nanoseconds, 1_000_000)

    for slot in 0..<options.queueDepth {
        try q.submit(op, namespace: ns.id, lba: loop.nextLBA(), blocks: blocks, buffer: buffer, at: slot * stride,
                     tag: UInt64(slot))
    }
    let start = monotonicNanoseconds()
    let end = start &+ durationNs
    var nextReport = start &+ intervalNs
    var lastIOs: UInt64 = 0
    var lastTime = start
    steadyState(true)
    q.ring()

    while true {
        _ = try q.waitForCompletions { loop.complete($0) }
        q.ring()
        let now = monotonicNanoseconds()
        if !loop.stopping && (now >= end || loop.failed != nil || loop.submitFailed || stop()) { loop.stopping = true }
        if loop.stopping && q.outstanding == 0 {
            steadyState(false)
            break
        }
        if let progress, now >= nextReport {
            let dt = Double(now - lastTime) / 1e9
            let d = Double(loop.ios - lastIOs)
            progress(PerfProgress(elapsed: .ns(now - start), ios: loop.ios, intervalIOPS: d / dt,
                                  intervalMBps: d * Double(bs) / dt / 1e6))
            lastIOs = loop.ios
            lastTime = now
            nextReport = now &+ intervalNs
        }
    }
    let ios = loop.ios
    let elapsed = Double(monotonicNanoseconds() - start) / 1e9
    if let failed = loop.failed {
        throw NVMeError(.commandFailed(failed), "a \(op) failed during the run: \(failed)", device: controller.address)
    }
    if loop.submitFailed {
        throw NVMeError(.invalidArgument, "a resubmission failed during the run", device: controller.address)
    }
    let us = { (v: UInt64) in Double(v) / 1000 }
    return PerfReport(
        queueDepth: options.queueDepth, blockSize: bs, write: options.write, interrupts: q.interruptVector != nil,
        mode: controller.mode.rawValue, seconds: elapsed, ios: ios, iops: Double(ios) / elapsed,
        megabytesPerSecond: Double(ios) * Double(bs) / elapsed / 1e6,
        latencyMicroseconds: .init(min: us(histogram.count == 0 ? 0 : histogram.min), mean: histogram.mean / 1000,
                                   p50: us(histogram.percentile(0.5)), p90: us(histogram.percentile(0.9)),
                                   p99: us(histogram.percentile(0.99)), p999: us(histogram.percentile(0.999)),
                                   max: us(histogram.max)),
        interruptWakeups: q.interruptWakeups)
}

/// The state of one perf run and what happens on each completion: record
/// the latency, resubmit to the same buffer slot at a new random address.
/// A class with stored properties, so the completion handler captures one
/// reference and nothing else (no boxed captures, no allocation per I/O).
final class PerfLoop {
    let queue: IOQueue
    let op: IOOpcode
    let namespace: UInt32
    let first: UInt64
    let span: UInt64
    let blocks: Int
    let buffer: IOBuffer
    let bufferIOVA: IOVA
    let bytes: Int
    let stride: Int
    let histogram: LatencyHistogram
    var rng: UInt64
    var ios: UInt64 = 0
    var failed: NVMeStatus?
    var submitFailed = false
    var stopping = false

    init(queue: IOQueue, op: IOOpcode, namespace: UInt32, first: UInt64, span: UInt64, blocks: Int, bytes: Int,
         buffer: IOBuffer, stride: Int, seed: UInt64, histogram: LatencyHistogram)
    {
        self.queue = queue
        self.op = op
        self.namespace = namespace
        self.first = first
        self.span = span
        self.blocks = blocks
        self.buffer = buffer
        bufferIOVA = buffer.iova
        self.bytes = bytes
        self.stride = stride
        self.histogram = histogram
        rng = seed == 0 ? 1 : seed
    }

    /// xorshift64*, scaled to an aligned address in the region.
    @inline(__always)
    func nextLBA() -> UInt64 {
        var x = rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        rng = x
        return first &+ ((x &* 0x2545_F491_4F6C_DD1D) % span) &* UInt64(blocks)
    }

    @inline(__always)
    func complete(_ c: IOCompletion) {
        if !c.status.isSuccess && failed == nil { failed = c.status }
        histogram.record(c.latencyNanoseconds)
        ios &+= 1
        guard !stopping else { return }
        // Checked once in runPerf (namespace, region, sizes); the slot just
        // freed makes room; the reap time stands for the submission time.
        if !queue.submitChecked(op, namespace: namespace, lba: nextLBA(), blocks: blocks, bytes: bytes,
                                iova: bufferIOVA + UInt64(Int(c.tag) &* stride), tag: c.tag, now: c.reapedAt)
        {
            submitFailed = true
        }
    }
}
