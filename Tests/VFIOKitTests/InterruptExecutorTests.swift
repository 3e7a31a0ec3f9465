import CAllocationCount
import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `EventFD.interrupts(on:)` with an `InterruptExecutor`: the executor's one
/// thread runs the awaiting task and polls the eventfd, so a count resumes the
/// task on that thread (no hand-off); against the fake kernel (real eventfds).
@Suite struct InterruptExecutorTests {
    /// Counts arrive in order, signals made while the task ran are summed into
    /// one count, and the task never leaves the executor's thread.
    @Test func countsInOrderSummedAndOnTheExecutorsThread() async throws {
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let (counts, threads) = await withTaskExecutorPreference(executor) { () -> ([UInt64?], Set<pthread_t>) in
            var threads: Set<pthread_t> = [pthread_self()]
            var counts: [UInt64?] = []
            var it = e.interrupts(on: executor).makeAsyncIterator()
            for n in 1...5 as ClosedRange<UInt64> {
                try? e.signal(n)
                counts.append(await it.next())
                threads.insert(pthread_self())
            }
            try? e.signal(1)
            try? e.signal(2)  // the thread runs this task: it cannot read between the two
            counts.append(await it.next())
            threads.insert(pthread_self())
            return (counts, threads)
        }
        #expect(counts == [1, 2, 3, 4, 5, 3])
        #expect(threads.count == 1, "the task ran on \(threads.count) threads")
        try e.close()
        _ = executor
    }

    /// Cancelling the waiting task ends its `next()` at once with nil.
    @Test func cancelEndsTheWaitPromptly() async throws {
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let waiting = Atomic<Bool>(false)
        let task = Task(executorPreference: executor) { () -> UInt64? in
            var it = e.interrupts(on: executor).makeAsyncIterator()
            waiting.store(true, ordering: .releasing)
            return await it.next()
        }
        #expect(try await eventually { waiting.load(ordering: .acquiring) })
        try await Task.sleep(for: .milliseconds(20))
        let start = ContinuousClock.now
        task.cancel()
        let got = await task.value
        #expect(got == nil)
        #expect(ContinuousClock.now - start < .seconds(3), "cancel took \(ContinuousClock.now - start)")
        try e.close()
    }

    /// Closing the eventfd ends the sequence (after the counts read before),
    /// and the fd is really closed once the executor's thread gave its use back.
    @Test func closeEndsTheSequenceAndReleaseEndsTheThread() async throws {
        let kernel = FakeKernel()
        var executor: InterruptExecutor? = try Syscalls.withProvider(kernel) { try InterruptExecutor() }
        let e = try Syscalls.withProvider(kernel) { try EventFD() }
        #expect(kernel.openFDCount == 2)  // the eventfd and the executor's wake eventfd
        let seen = Mutex<(counts: [UInt64], ended: Bool)>(([], false))
        let consumer = Task(executorPreference: executor!) { [executor] in
            for await n in e.interrupts(on: executor!) { seen.withLock { $0.counts.append(n) } }
            seen.withLock { $0.ended = true }
        }
        try e.signal(2)
        #expect(try await eventually { seen.withLock { $0.counts } == [2] })
        try e.close()
        #expect(try await eventually(.seconds(3)) { seen.withLock { $0.ended } }, "the sequence did not end after close")
        await consumer.value
        #expect(seen.withLock { $0.counts } == [2])
        #expect(try await eventually { kernel.openFDCount == 1 }, "the eventfd was not closed: \(kernel.openFDCount) open")
        // Releasing the executor ends its thread, which closes its wake eventfd as it exits.
        executor = nil
        #expect(try await eventually { kernel.openFDCount == 0 }, "the executor's thread did not exit: \(kernel.openFDCount) open")
        #expect(kernel.staleFDUses == [])
    }

    /// Releasing the executor ends a sequence still registered with it (its
    /// `next()` returns nil, the eventfd's use is given back) and the thread.
    @Test func releasingTheExecutorEndsItsSequences() async throws {
        let kernel = FakeKernel()
        var executor: InterruptExecutor? = try Syscalls.withProvider(kernel) { try InterruptExecutor() }
        let e = try Syscalls.withProvider(kernel) { try EventFD() }
        var it = e.interrupts(on: executor!).makeAsyncIterator()
        try e.signal(4)
        #expect(await it.next() == 4)  // awaited off the executor: still delivered (with a hand-off)
        executor = nil
        #expect(await it.next() == nil)
        try e.close()
        #expect(try await eventually { kernel.openFDCount == 0 }, "\(kernel.openFDCount) fds left open")
        #expect(kernel.staleFDUses == [])
    }

    /// No allocation per interrupt: signal, await, resume, all on the executor's
    /// thread, counted by the test bundle's interposed allocator; the baseline is
    /// the same syscalls straight to the fake kernel on the same thread.
    @Test func noAllocationPerInterrupt() async throws {
        try #require(vfiokit_allocations_counted() != 0, "this build does not count allocations (a sanitizer build?)")
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let rounds = 400
        let (extra, threads) = await withTaskExecutorPreference(executor) { () -> (Double, Int) in
            let fd = e.fd.numberForHandoff
            var one: UInt64 = 1, value: UInt64 = 0
            var threads: Set<pthread_t> = []
            // The baseline first, while no iterator reads the eventfd.
            let tid = pthread_self()
            let a = vfiokit_thread_allocations()
            for _ in 0..<rounds {
                _ = Glibc.write(fd, &one, 8)
                var p = (pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                _ = withUnsafeMutableBytes(of: &p) { kernel.poll($0.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, -1) }
                _ = withUnsafeMutableBytes(of: &value) { kernel.read(fd, $0) }
            }
            let b = vfiokit_thread_allocations()
            var it = e.interrupts(on: executor).makeAsyncIterator()
            for _ in 0..<8 { _ = Glibc.write(fd, &one, 8); _ = await it.next() }  // warm up
            let b2 = vfiokit_thread_allocations()
            for _ in 0..<rounds {
                _ = Glibc.write(fd, &one, 8)
                let got = await it.next()
                precondition(got == 1)
            }
            let c = vfiokit_thread_allocations()
            threads.insert(tid)
            threads.insert(pthread_self())
            return ((Double(c - b2) - Double(b - a)) / Double(rounds), threads.count)
        }
        #expect(threads == 1, "the task left the executor's thread")
        #expect(extra < 0.5, "interrupts(on:) allocates \(extra) times per interrupt")
        try e.close()
    }
}
