import CAllocationCount
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `EventFD.withInterrupts(on:_:)` and `EventFD.withInterrupts(_:)`: the interrupt
/// sequences of a scope whose one cancellation handler replaces the one per
/// `next()`; against the fake kernel (real eventfds).
@Suite struct InterruptScopeTests {
    /// Counts arrive in order through `for await`, signals made while the task
    /// ran are summed into one count, and the task stays on the executor's thread.
    @Test func executorScopeCountsInOrderOnTheExecutorsThread() async throws {
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let (counts, threads) = await withTaskExecutorPreference(executor) { () -> ([UInt64], Set<pthread_t>) in
            await e.withInterrupts(on: executor) { interrupts in
                var threads: Set<pthread_t> = [pthread_self()]
                var counts: [UInt64] = []
                try? e.signal(1)
                for await n in interrupts {
                    counts.append(n)
                    threads.insert(pthread_self())
                    if counts.count < 5 {
                        try? e.signal(UInt64(counts.count + 1))
                    } else if counts.count == 5 {
                        try? e.signal(1)
                        try? e.signal(2)  // the thread runs this task: it cannot read between the two
                    } else {
                        break
                    }
                }
                return (counts, threads)
            }
        }
        #expect(counts == [1, 2, 3, 4, 5, 3])
        #expect(threads.count == 1, "the task ran on \(threads.count) threads")
        try e.close()
        #expect(try await eventually { kernel.openFDCount == 1 }, "the eventfd was not closed: \(kernel.openFDCount) open")
        #expect(kernel.staleFDUses == [])
    }

    /// Cancelling the task ends a `next()` waiting inside the scope at once with nil
    /// (the scope's one handler stops its sequences).
    @Test func executorScopeCancelEndsAWaitingNextPromptly() async throws {
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let waiting = Atomic<Bool>(false), done = Atomic<Bool>(false)
        let task = Task(executorPreference: executor) { () -> (UInt64?, UInt64?) in
            let r = await e.withInterrupts(on: executor) { interrupts in
                var it = interrupts.makeAsyncIterator()
                try? e.signal(7)
                let first = await it.next()
                waiting.store(true, ordering: .releasing)
                return (first, await it.next())
            }
            done.store(true, ordering: .releasing)
            return r
        }
        #expect(try await eventually { waiting.load(ordering: .acquiring) })
        try await Task.sleep(for: .milliseconds(20))
        let start = ContinuousClock.now
        task.cancel()
        #expect(try await eventually(.seconds(3)) { done.load(ordering: .acquiring) }, "cancel did not end the wait")
        if !done.load(ordering: .acquiring) { try e.signal(1) }  // release it, so a failure does not hang
        let (first, second) = await task.value
        #expect(first == 7)
        #expect(second == nil)
        #expect(ContinuousClock.now - start < .seconds(3), "cancel took \(ContinuousClock.now - start)")
        try e.close()
        #expect(try await eventually { kernel.openFDCount == 1 }, "the eventfd was not closed: \(kernel.openFDCount) open")
        #expect(kernel.staleFDUses == [])
    }

    /// A task cancelled before the scope: its sequence ends at the first `next()`.
    @Test func executorScopeInAnAlreadyCancelledTaskEndsAtOnce() async throws {
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let done = Atomic<Bool>(false)
        let task = Task(executorPreference: executor) { () -> UInt64? in
            withUnsafeCurrentTask { $0?.cancel() }
            let r = await e.withInterrupts(on: executor) { interrupts in
                var it = interrupts.makeAsyncIterator()
                return await it.next()
            }
            done.store(true, ordering: .releasing)
            return r
        }
        #expect(try await eventually(.seconds(3)) { done.load(ordering: .acquiring) }, "the cancelled task waited")
        if !done.load(ordering: .acquiring) { try e.signal(1) }  // release it, so a failure does not hang
        let got = await task.value
        #expect(got == nil)
        try e.close()
        #expect(try await eventually { kernel.openFDCount == 1 }, "the eventfd was not closed: \(kernel.openFDCount) open")
    }

    /// The scope's sequences end with it: an iterator made inside and kept, or one
    /// made later from the sequence, returns nil and gives the eventfd's use back.
    @Test func executorScopeEndStopsItsSequences() async throws {
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let (sequence, kept) = await e.withInterrupts(on: executor) { interrupts in
            (interrupts, interrupts.makeAsyncIterator())
        }
        var it = kept
        try e.signal(1)
        #expect(await it.next() == nil)
        var later = sequence.makeAsyncIterator()
        #expect(await later.next() == nil)
        try e.close()
        #expect(try await eventually { kernel.openFDCount == 1 }, "the eventfd was not closed: \(kernel.openFDCount) open")
        #expect(kernel.staleFDUses == [])
        _ = executor
    }

    /// No allocation per interrupt in the scope: signal, await, resume, all on the
    /// executor's thread (as `InterruptExecutorTests.noAllocationPerInterrupt`).
    @Test func executorScopeNoAllocationPerInterrupt() async throws {
        try #require(vfiokit_allocations_counted() != 0, "this build does not count allocations (a sanitizer build?)")
        let kernel = FakeKernel()
        let (executor, e) = try Syscalls.withProvider(kernel) { (try InterruptExecutor(), try EventFD()) }
        let rounds = 400
        let (extra, threads) = await withTaskExecutorPreference(executor) { () -> (Double, Int) in
            await e.withInterrupts(on: executor) { interrupts in
                let fd = e.fd.numberForHandoff
                var one: UInt64 = 1, value: UInt64 = 0
                let tid = pthread_self()
                // The baseline: the same syscalls straight to the fake kernel, before any iterator reads.
                let a = vfiokit_thread_allocations()
                for _ in 0..<rounds {
                    _ = Glibc.write(fd, &one, 8)
                    var p = (pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                    _ = withUnsafeMutableBytes(of: &p) { kernel.poll($0.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, -1) }
                    _ = withUnsafeMutableBytes(of: &value) { kernel.read(fd, $0) }
                }
                let b = vfiokit_thread_allocations()
                var it = interrupts.makeAsyncIterator()
                for _ in 0..<8 { _ = Glibc.write(fd, &one, 8); _ = await it.next() }  // warm up
                let b2 = vfiokit_thread_allocations()
                for _ in 0..<rounds {
                    _ = Glibc.write(fd, &one, 8)
                    let got = await it.next()
                    precondition(got == 1)
                }
                let c = vfiokit_thread_allocations()
                let threads: Set<pthread_t> = [tid, pthread_self()]
                return ((Double(c - b2) - Double(b - a)) / Double(rounds), threads.count)
            }
        }
        #expect(threads == 1, "the task left the executor's thread")
        #expect(extra < 0.5, "withInterrupts(on:) allocates \(extra) times per interrupt")
        try e.close()
    }

    /// `withInterrupts(_:)` (the sequence's own thread): counts arrive, and
    /// cancelling the task ends a waiting `next()` promptly; the thread leaves.
    @Test func threadScopeCountsAndCancelEndsAWaitingNextPromptly() async throws {
        let kernel = FakeKernel()
        let e = try Syscalls.withProvider(kernel) { try EventFD() }
        let waiting = Atomic<Bool>(false), done = Atomic<Bool>(false)
        let task = Task { () -> (UInt64?, UInt64?) in
            let r = await e.withInterrupts { interrupts in
                var it = interrupts.makeAsyncIterator()
                try? e.signal(3)
                let first = await it.next()
                waiting.store(true, ordering: .releasing)
                return (first, await it.next())
            }
            done.store(true, ordering: .releasing)
            return r
        }
        #expect(try await eventually(.seconds(60)) { waiting.load(ordering: .acquiring) })
        try await Task.sleep(for: .milliseconds(20))
        let start = ContinuousClock.now
        task.cancel()
        #expect(try await eventually(.seconds(3)) { done.load(ordering: .acquiring) }, "cancel did not end the wait")
        if !done.load(ordering: .acquiring) { try e.signal(1) }  // release it, so a failure does not hang
        let (first, second) = await task.value
        #expect(first == 3)
        #expect(second == nil)
        #expect(ContinuousClock.now - start < .seconds(3), "cancel took \(ContinuousClock.now - start)")
        try e.close()
        #expect(try await eventually(.seconds(30)) { kernel.openFDCount == 0 }, "\(kernel.openFDCount) fds left open")
        #expect(kernel.staleFDUses == [])
    }
}
