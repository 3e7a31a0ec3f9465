import Synchronization
import VFIOKit

/// A userspace NVMe controller: bring-up, admin commands, I/O queues and
/// teardown as the NVMe base specification 2.0 describes them (section 3.5).
///
///     let controller = try NVMeController(address: "0000:00:05.0")
///     defer { try? controller.close() }
///     let buffer = try controller.makeBuffer(bytes: 4096)
///     try controller.queue(0).read(lba: 0, blocks: 8, into: buffer)
///
/// Every error path after the device is open shuts the controller down and
/// releases it, so the kernel's nvme driver can take it back
/// (`vfioctl unbind BDF --restore`). Call ``close()`` when done: it deletes
/// the I/O queues, shuts the controller down (CC.SHN), disables it, turns
/// off MSI-X and bus mastering and closes the device.
/// ``init(device:options:)`` brings a controller up on a device the caller
/// opened and keeps: ``close()`` then leaves the device open.
///
/// Threads: each ``IOQueue`` belongs to one thread at a time; admin commands
/// (including the aborts a timed-out I/O sends) take a lock. ``close()`` and
/// ``reset()`` need every queue idle.
public final class NVMeController: @unchecked Sendable {
    // @unchecked: the mutable state below is changed only by init, reset()
    // and close(), which the threading rule above keeps exclusive; the admin
    // queue is behind `adminLock`; the failure state is atomic.

    public struct Options: Sendable {
        /// The DMA mode; nil: the best the kernel offers (native iommufd first).
        public var mode: NVMeDMAMode?
        /// Completions by MSI-X (one vector per queue) or by polling.
        public var interrupts: Bool
        /// I/O queue pairs to create (fewer if the controller grants fewer).
        public var ioQueueCount: Int
        /// Most outstanding commands per I/O queue (the rings get one more entry).
        public var queueDepth: Int
        /// How long a command or a register transition may take; the one
        /// timeout of the driver (ready waits use the larger of this and CAP.TO).
        public var timeout: Duration
        /// Largest single transfer (capped by MDTS and by one PRP list page: 2 MiB).
        public var maxTransferBytes: Int

        public init(mode: NVMeDMAMode? = nil, interrupts: Bool = true, ioQueueCount: Int = 1, queueDepth: Int = 128,
                    timeout: Duration = .seconds(5), maxTransferBytes: Int = 512 * 1024)
        {
            self.mode = mode
            self.interrupts = interrupts
            self.ioQueueCount = ioQueueCount
            self.queueDepth = queueDepth
            self.timeout = timeout
            self.maxTransferBytes = maxTransferBytes
        }
    }

    /// The PCI address (0000:00:05.0).
    public let address: String
    public let options: Options
    /// The DMA mode in use.
    public let mode: NVMeDMAMode
    public let capabilities: ControllerCapabilities
    public let version: ControllerVersion
    public private(set) var identity: ControllerIdentity
    /// The active namespaces, by identifier.
    public private(set) var namespaces: [Namespace] = []
    /// The I/O queues (ids 1...count).
    public private(set) var ioQueues: [IOQueue] = []
    /// The largest transfer one command moves.
    public private(set) var maxTransferBytes: Int
    /// MSI-X vectors in use (admin + one per I/O queue), 0 when polling.
    public var interruptVectors: Int { interrupts?.count ?? 0 }

    /// The PCI function through VFIOKit's front door.
    let device: AttachedDevice
    /// Whether ``close()`` closes ``device`` (opened by ``init(address:options:)``)
    /// or leaves it open to its owner (``init(device:options:)``).
    private let ownsDevice: Bool
    let registers: Registers
    let pageSize = NVMeController.pageSize
    static let pageSize = 4096
    private let admin: QueuePair
    private let adminLock = Mutex<Void>(())
    /// A 4 KiB buffer for Identify data, used under the admin lock.
    private let scratch: DMAMemory
    /// Vector 0 for the admin queue, vector i for I/O queue i; nil when polling.
    private var interrupts: InterruptSet?
    /// Running, failed (disabled after an unrecoverable timeout) or closed; shared with the queues.
    let shared = ControllerState()
    private let failure = Mutex<String?>(nil)

    // MARK: bring-up

    /// Opens the controller at `address` (bound to vfio-pci) and brings it up:
    /// reset, admin queue, enable, identify, I/O queues. ``close()`` closes
    /// the device too.
    public convenience init(address: String, options: Options = Options()) throws(NVMeError) {
        let (device, registers) = try AttachedDevice.nvme(address, mode: options.mode)
        try self.init(device: device, registers: registers, ownsDevice: true, options: options)
    }

    /// Brings up the controller of `device`, which the caller opened and
    /// attached (`AttachedDevice.open`) and keeps: maps BAR0, turns bus
    /// mastering on, then reset, admin queue, enable, identify, I/O queues, in
    /// the device's address space (`options.mode` does not apply).
    /// ``close()`` (and every failure) shuts the controller down, unmaps the
    /// driver's DMA memory and BAR0 and turns bus mastering off, but leaves
    /// the device open: a controller can be brought up again on it, and the
    /// caller closes it. One controller at a time per device. Opening and
    /// closing a VFIO device is the costly part (vfio-pci enables and disables
    /// the PCI function, with a reset), so this is the entry for bringing a
    /// controller up and down repeatedly.
    public convenience init(device: AttachedDevice, options: Options = Options()) throws(NVMeError) {
        try device.checkOpenNVMe()
        let registers = try device.nvmeRegisters()
        try self.init(device: device, registers: registers, ownsDevice: false, options: options)
    }

    private init(device: AttachedDevice, registers: Registers, ownsDevice: Bool, options: Options) throws(NVMeError) {
        let name = device.name.description
        let cap = ControllerCapabilities(raw: registers.load64(Register.cap))
        let pageSize = NVMeController.pageSize

        // Phase 1: reset, admin queue, interrupts, enable. Each failure
        // releases what exists so far.
        var adminMemory: DMAMemory?
        var scratchMemory: DMAMemory?
        var vectors: InterruptSet?
        let adminQueue: QueuePair
        do throws(NVMeError) {
            if cap.raw == .max {
                throw NVMeError(.controllerFatal, "CAP reads all ones: the device does not respond", device: name,
                                hint: "reset it (`vfioctl reset \(name)`) or give it back to the kernel and check dmesg")
            }
            guard cap.supportsNVMCommandSet else {
                throw NVMeError(.unsupported, "the controller does not offer the NVM command set (CAP.CSS 0x\(String((cap.raw >> 37) & 0xff, radix: 16)))",
                                device: name)
            }
            guard cap.minPageSize <= pageSize, pageSize <= cap.maxPageSize else {
                throw NVMeError(.unsupported, "the controller's page sizes (\(cap.minPageSize)...\(cap.maxPageSize) bytes) exclude 4 KiB",
                                device: name)
            }
            try Self.disable(registers, cap, timeout: options.timeout, address: name)
            let adminEntries = min(32, cap.maxQueueEntries)
            let am = try device.dmaMemory(QueuePair.layout(entries: adminEntries, prpListBytes: 0).total)
            adminMemory = am
            scratchMemory = try device.dmaMemory(pageSize)
            // Vector 0 for the admin queue, vector i for I/O queue i.
            if options.interrupts {
                let available = try device.msixVectorCount()
                guard available >= 2 else {
                    throw NVMeError(.unsupported, "the controller has \(available) MSI-X vectors; interrupts need 2 or more",
                                    device: name, hint: "use polling (--poll)")
                }
                vectors = try device.msix(count: min(max(1, options.ioQueueCount), available - 1) + 1)
            }
            adminQueue = QueuePair(id: 0, entries: adminEntries, memory: am, prpListBytes: 0, pageSize: pageSize,
                                   registers: registers, doorbellStride: cap.doorbellStride, interrupt: vectors?[0])
            try Self.enable(registers, cap, admin: adminQueue, timeout: options.timeout, address: name)
        } catch {
            try? Self.disable(registers, cap, timeout: options.timeout, address: name)
            try? adminMemory?.release()
            try? scratchMemory?.release()
            try? vectors?.close()
            try? device.release(closing: ownsDevice, registers: registers)
            throw error
        }

        self.device = device
        self.ownsDevice = ownsDevice
        self.address = name
        self.mode = device.mode
        self.options = options
        self.registers = registers
        capabilities = cap
        version = ControllerVersion(raw: registers.load32(Register.vs))
        admin = adminQueue
        scratch = scratchMemory!
        interrupts = vectors
        identity = ControllerIdentity([UInt8](repeating: 0, count: 4096))
        // MDTS is known after Identify; the option and one PRP list page cap it.
        maxTransferBytes = max(pageSize, min(options.maxTransferBytes, 2 << 20) / pageSize * pageSize)

        // Phase 2: identify and I/O queues; a failure closes (shutdown and release).
        do throws(NVMeError) {
            identity = try identifyController()
            if let mdts = identity.maxTransferBytes(minPageSize: cap.minPageSize) {
                maxTransferBytes = min(maxTransferBytes, mdts)
            }
            namespaces = try identifyNamespaces()
            try createIOQueues(count: max(1, vectors.map { $0.count - 1 } ?? options.ioQueueCount))
        } catch {
            try? close()
            throw error
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0 (the controller stops all DMA and
    /// forgets its queues). If an enable is still in progress, waits for it first.
    static func disable(_ r: Registers, _ cap: ControllerCapabilities, timeout: Duration, address: String) throws(NVMeError) {
        var cc = ControllerConfiguration(raw: r.load32(Register.cc))
        let limit = max(cap.readyTimeout, timeout)
        var csts = ControllerStatus(raw: r.load32(Register.csts))
        if csts.isAllOnes {
            throw NVMeError(.controllerFatal, "CSTS reads all ones: the device does not respond", device: address)
        }
        if cc.enabled && !csts.ready && !csts.fatal {
            // Spec 3.5.4: do not clear EN while RDY has not followed it yet.
            _ = waitForStatus(r, limit) { $0.ready || $0.fatal }
        }
        if cc.enabled {
            cc.enabled = false
            r.store32(cc.raw, Register.cc)
        }
        csts = ControllerStatus(raw: r.load32(Register.csts))
        guard waitForStatus(r, limit, { !$0.ready }) else {
            throw NVMeError(.timeout, "CSTS.RDY stayed 1 for \(limit.humanReadable) after clearing CC.EN (CAP.TO \(cap.readyTimeout.humanReadable))",
                            device: address, hint: "the controller is wedged: `vfioctl reset \(address)` resets the function")
        }
    }

    /// AQA/ASQ/ACQ, CC with EN = 1, and wait for CSTS.RDY = 1 (or CSTS.CFS).
    static func enable(_ r: Registers, _ cap: ControllerCapabilities, admin: QueuePair, timeout: Duration,
                       address: String) throws(NVMeError)
    {
        let size = UInt32(admin.entries - 1)
        r.store32(size << 16 | size, Register.aqa)
        r.store64(admin.sqIOVA.rawValue, Register.asq)
        r.store64(admin.cqIOVA.rawValue, Register.acq)
        var cc = ControllerConfiguration.nvm(pageShift: 12)
        r.store32(cc.raw, Register.cc)
        cc.enabled = true
        writeBarrier()
        r.store32(cc.raw, Register.cc)
        let limit = max(cap.readyTimeout, timeout)
        guard waitForStatus(r, limit, { $0.ready || $0.fatal }) else {
            throw NVMeError(.timeout, "CSTS.RDY did not become 1 within \(limit.humanReadable) of setting CC.EN (CAP.TO \(cap.readyTimeout.humanReadable))",
                            device: address, hint: "`vfioctl reset \(address)` resets the function; then try again")
        }
        let csts = ControllerStatus(raw: r.load32(Register.csts))
        if csts.fatal {
            throw NVMeError(.controllerFatal, "the controller reported a fatal status (CSTS.CFS = 1, CSTS 0x\(String(csts.raw, radix: 16))) while enabling",
                            device: address, hint: "give it back to the kernel (`vfioctl unbind \(address) --restore`) and read dmesg")
        }
    }

    /// Polls CSTS (backing off from 10 µs to 1 ms) until `done` or `limit` passes.
    static func waitForStatus(_ r: Registers, _ limit: Duration, _ done: (ControllerStatus) -> Bool) -> Bool {
        let deadline = monotonicNanoseconds() &+ limit.nanoseconds
        var pause: UInt64 = 10_000
        while true {
            let s = ControllerStatus(raw: r.load32(Register.csts))
            if s.isAllOnes { return false }
            if done(s) { return true }
            if monotonicNanoseconds() >= deadline { return false }
            sleepNanoseconds(pause)
            pause = min(pause * 2, 1_000_000)
        }
    }

    // MARK: admin commands

    /// Runs one admin command and waits for it (the controller's timeout).
    /// A timed-out admin command fails the controller (it is disabled, so
    /// nothing it may still do reaches memory); ``reset()`` recovers.
    @discardableResult
    func adminCommand(_ entry: SubmissionEntry, data: (iova: IOVA, length: Int)? = nil,
                      timeout: Duration? = nil, closing: Bool = false,
                      what: @autoclosure () -> String) throws(NVMeError) -> Completion
    {
        if !closing { try checkRunning() }
        let result = adminLock.withLock { _ -> Result<Completion, NVMeError> in
            var e = entry
            guard let cid = admin.submit(&e, dataIOVA: data?.iova ?? .zero, length: data?.length ?? 0, state: .awaited,
                                         tag: 0, now: monotonicNanoseconds())
            else {
                return .failure(NVMeError(.invalidArgument, "admin queue full or transfer too large", device: address))
            }
            admin.ring()
            let limit = timeout ?? options.timeout
            let done: Bool
            do throws(NVMeError) { done = try admin.wait(for: cid, deadline: monotonicNanoseconds() &+ limit.nanoseconds) { _ in } } catch {
                return .failure(error)
            }
            guard done else {
                admin.slots[Int(cid)].state = .abandoned
                return .failure(NVMeError(.timeout, "", device: address))
            }
            let (status, dw0) = admin.collect(cid)
            return .success(Completion(result: dw0, submissionQueueHead: admin.sqHead, submissionQueueID: 0,
                                       commandID: cid, status: status))
        }
        switch result {
        case .success(let c):
            guard c.status.isSuccess else {
                throw NVMeError(.commandFailed(c.status), "\(what()) failed: \(c.status)", device: address)
            }
            return c
        case .failure(var e):
            if e.kind == .timeout {
                let limit = timeout ?? options.timeout
                e = statusError() ?? NVMeError(.timeout, "\(what()) did not complete within \(limit.humanReadable)", device: address,
                                               hint: "the controller was disabled; NVMeController.reset() or closing and reopening brings it back")
                fail(e.message)
            }
            throw e
        }
    }

    /// Identify Controller (CNS 01h).
    func identifyController() throws(NVMeError) -> ControllerIdentity {
        try adminCommand(.identify(cns: 1), data: (scratch.iova, pageSize), what: "Identify Controller")
        return ControllerIdentity(scratchBytes())
    }

    /// Active namespace list (CNS 02h), then Identify Namespace (CNS 00h) for each.
    func identifyNamespaces() throws(NVMeError) -> [Namespace] {
        var ids: [UInt32] = []
        if version >= ControllerVersion(raw: 0x0001_0100) {
            try adminCommand(.identify(cns: 2), data: (scratch.iova, pageSize), what: "Identify Active Namespace ID list")
            let b = scratchBytes()
            for i in 0..<1024 {
                let id = le32(b, 4 * i)
                if id == 0 { break }
                ids.append(id)
            }
        } else {
            ids = Array(1...max(1, min(identity.namespaceCount, 1024)))
        }
        var out: [Namespace] = []
        for id in ids {
            try adminCommand(.identify(cns: 0, namespace: id), data: (scratch.iova, pageSize), what: "Identify Namespace \(id)")
            let ns = NamespaceIdentity(id: id, scratchBytes())
            if ns.size > 0 { out.append(ns) }
        }
        return out
    }

    private func scratchBytes() -> [UInt8] {
        // Safety: scratch is a live mapping of at least one page.
        Array(UnsafeRawBufferPointer(start: scratch.base, count: pageSize))
    }

    /// Set Features (Number of Queues), then Create I/O CQ and SQ for each.
    private func createIOQueues(count wanted: Int) throws(NVMeError) {
        let granted = try adminCommand(.setNumberOfQueues(submission: wanted, completion: wanted),
                                       what: "Set Features (Number of Queues)")
        let sqs = Int(granted.result & 0xffff) + 1, cqs = Int(granted.result >> 16) + 1
        let count = min(wanted, sqs, cqs)
        let entries = min(max(options.queueDepth, 1) + 1, capabilities.maxQueueEntries)
        // One PRP list per command: 8 bytes per page after the first, as a
        // power of two so a list never crosses a page.
        var listBytes = 64
        while listBytes < (maxTransferBytes / pageSize) * 8 { listBytes *= 2 }
        let geometry = namespaces.map { IOQueue.Geometry(id: $0.id, blockShift: $0.format.dataShift, blocks: $0.size) }
        for i in 1...count {
            let memory = try device.dmaMemory(QueuePair.layout(entries: entries, prpListBytes: listBytes).total)
            let pair = QueuePair(id: UInt16(i), entries: entries, memory: memory, prpListBytes: listBytes, pageSize: pageSize,
                                 registers: registers, doorbellStride: capabilities.doorbellStride,
                                 interrupt: interrupts?[i])
            let q = IOQueue(pair: pair, controller: self, state: shared, geometry: geometry, timeout: options.timeout,
                            maxTransferBytes: maxTransferBytes)
            ioQueues.append(q)
            try createOnDevice(q)
        }
    }

    private func createOnDevice(_ q: IOQueue) throws(NVMeError) {
        let p = q.pair
        try adminCommand(.createCompletionQueue(id: p.id, entries: p.entries, iova: p.cqIOVA,
                                                vector: p.interrupt.map { UInt16($0.vector) }),
                         what: "Create I/O Completion Queue \(p.id)")
        try adminCommand(.createSubmissionQueue(id: p.id, entries: p.entries, iova: p.sqIOVA, cq: p.id),
                         what: "Create I/O Submission Queue \(p.id)")
    }

    // MARK: failure, timeouts, reset

    @inline(__always)
    func checkRunning() throws(NVMeError) {
        switch shared.value.load(ordering: .acquiring) {
        case 0: return
        case 1:
            throw NVMeError(.controllerFailed, "the controller was disabled after: \(failure.withLock { $0 } ?? "a failure")",
                            device: address, hint: "NVMeController.reset() brings it back, or close and open it again")
        default:
            throw NVMeError(.closed, "the controller is closed", device: address)
        }
    }

    /// A fatal controller status, if CSTS reports one now.
    func statusError() -> NVMeError? {
        let csts = ControllerStatus(raw: registers.load32(Register.csts))
        if csts.isAllOnes {
            return NVMeError(.controllerFatal, "CSTS reads all ones: the device stopped responding", device: address)
        }
        if csts.fatal {
            return NVMeError(.controllerFatal, "the controller reported a fatal status (CSTS.CFS = 1, CSTS 0x\(String(csts.raw, radix: 16)))",
                             device: address, hint: "NVMeController.reset() re-initializes it; if that fails, give it back to the kernel (`vfioctl unbind \(address) --restore`)")
        }
        return nil
    }

    /// Disables the controller (no more DMA or completions) and marks it failed.
    func fail(_ reason: String) {
        guard shared.value.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged else { return }
        failure.withLock { $0 = reason }
        try? Self.disable(registers, capabilities, timeout: options.timeout, address: address)
    }

    /// After a timeout the driver gave up on: Abort, then wait for the command.
    /// Returns the command's late completion if it arrived; if not, the
    /// controller is disabled (so the buffer is safe) and marked failed.
    func recoverTimedOut(_ q: QueuePair, cid: UInt16, waited: Duration) -> NVMeError {
        if let e = statusError() {
            q.slots[Int(cid)].state = .abandoned
            fail(e.message)
            return e
        }
        let abort: String
        do {
            let c = try adminCommand(.abort(sq: q.id, cid: cid), what: "Abort (SQ \(q.id), command \(cid))")
            abort = c.result & 1 == 0 ? "aborted" : "the controller declined to abort it"
        } catch {
            q.slots[Int(cid)].state = .abandoned
            if error.kind != .controllerFailed { fail("Abort of command \(cid) on queue \(q.id) failed: \(error.message)") }
            return NVMeError(.timeout, "command \(cid) on I/O queue \(q.id) did not complete within \(waited.humanReadable); "
                                + "Abort failed too (\(error.message)): the controller was disabled", device: address,
                             hint: "NVMeController.reset() re-initializes it")
        }
        let done = (try? q.wait(for: cid, deadline: monotonicNanoseconds() &+ options.timeout.nanoseconds) { _ in }) ?? false
        if done {
            let (status, _) = q.collect(cid)
            return NVMeError(.timeout, "command \(cid) on I/O queue \(q.id) did not complete within \(waited.humanReadable); "
                                + "after Abort (\(abort)) it completed with \(status)", device: address)
        }
        q.slots[Int(cid)].state = .abandoned
        fail("command \(cid) on I/O queue \(q.id) timed out and did not complete after Abort")
        return NVMeError(.timeout, "command \(cid) on I/O queue \(q.id) did not complete within \(waited.humanReadable), "
                            + "nor \(options.timeout.humanReadable) after Abort (\(abort)): the controller was disabled so it cannot "
                            + "touch the buffer any more", device: address, hint: "NVMeController.reset() re-initializes it")
    }

    /// Re-initializes a failed (or working, idle) controller: disable, admin
    /// queue, enable, the same I/O queues. Every outstanding command is lost.
    public func reset() throws(NVMeError) {
        guard shared.value.load(ordering: .acquiring) != 2 else { throw NVMeError(.closed, "the controller is closed", device: address) }
        try Self.disable(registers, capabilities, timeout: options.timeout, address: address)
        admin.resetState()
        for q in ioQueues { q.pair.resetState() }
        try Self.enable(registers, capabilities, admin: admin, timeout: options.timeout, address: address)
        shared.value.store(0, ordering: .releasing)
        failure.withLock { $0 = nil }
        let n = ioQueues.count
        try adminCommand(.setNumberOfQueues(submission: n, completion: n), what: "Set Features (Number of Queues)")
        for q in ioQueues { try createOnDevice(q) }
    }

    // MARK: I/O

    /// DMA memory for data, mapped for the device: `bytes` rounded up to 4 KiB.
    public func makeBuffer(bytes: Int) throws(NVMeError) -> IOBuffer {
        guard bytes > 0 else { throw NVMeError(.invalidArgument, "a buffer needs at least one byte", device: address) }
        return IOBuffer(memory: try device.dmaMemory(bytes))
    }

    /// I/O queue `index` (0-based; its NVMe queue id is index + 1).
    public func queue(_ index: Int = 0) -> IOQueue { ioQueues[index] }

    /// A namespace by id.
    public func namespace(_ id: UInt32 = 1) throws(NVMeError) -> Namespace {
        guard let ns = namespaces.first(where: { $0.id == id }) else {
            throw NVMeError(.invalidArgument, "no active namespace \(id) (active: \(namespaces.map(\.id)))", device: address)
        }
        return ns
    }

    // MARK: teardown

    /// Deletes the I/O queues, shuts the controller down (CC.SHN, waiting for
    /// CSTS.SHST complete), disables it, turns off MSI-X and bus mastering,
    /// unmaps the driver's DMA memory and closes the device (a device given
    /// to ``init(device:options:)``: unmaps BAR0 and leaves it open). Runs
    /// every step even when one fails; throws the first failure. Idempotent.
    public func close() throws(NVMeError) {
        let before = shared.value.exchange(2, ordering: .acquiringAndReleasing)
        guard before != 2 else { return }
        var first: NVMeError?
        if before == 0 {
            // Orderly: delete the I/O queues (SQ before its CQ), then shut down.
            let short = min(options.timeout, .seconds(1))
            for q in ioQueues.reversed() {
                do {
                    try adminCommand(.deleteSubmissionQueue(id: q.pair.id), timeout: short, closing: true,
                                     what: "Delete I/O Submission Queue \(q.pair.id)")
                    try adminCommand(.deleteCompletionQueue(id: q.pair.id), timeout: short, closing: true,
                                     what: "Delete I/O Completion Queue \(q.pair.id)")
                } catch {
                    first = first ?? error
                    break
                }
            }
            do { try shutdown() } catch { first = first ?? error }
        }
        do { try Self.disable(registers, capabilities, timeout: options.timeout, address: address) } catch { first = first ?? error }
        for q in ioQueues {
            q.pair.registers = nil
            do { try q.pair.memory?.release() } catch { first = first ?? error }
        }
        admin.registers = nil
        do { try admin.memory?.release() } catch { first = first ?? error }
        do { try scratch.release() } catch { first = first ?? error }
        do { try interrupts?.close() } catch { first = first ?? platformError(error, "turn off MSI-X", device: address) }
        interrupts = nil
        do { try device.release(closing: ownsDevice, registers: registers) } catch { first = first ?? error }
        if let first { throw first }
    }

    /// Normal shutdown: CC.SHN = 01b, wait for CSTS.SHST = 10b (up to RTD3E,
    /// at least the driver's timeout, at most 60 s).
    private func shutdown() throws(NVMeError) {
        var cc = ControllerConfiguration(raw: registers.load32(Register.cc))
        guard cc.enabled else { return }
        cc.shutdownNotification = 1
        registers.store32(cc.raw, Register.cc)
        let rtd3 = Duration.microseconds(Int64(identity.rtd3EntryLatency))
        let limit = min(max(options.timeout, rtd3), .seconds(60))
        guard Self.waitForStatus(registers, limit, { $0.shutdownStatus == 2 || $0.fatal }) else {
            throw NVMeError(.timeout, "shutdown did not complete (CSTS.SHST) within \(limit.humanReadable)", device: address,
                            hint: "the controller was disabled anyway; the kernel's driver resets it when it takes it back")
        }
    }

    deinit {
        try? close()
    }
}

/// The controller's state as its queues see it: 0 running, 1 failed, 2 closed.
final class ControllerState: Sendable {
    let value = Atomic<UInt8>(0)
}
