import Dispatch
import Synchronization
import Testing
import VFIOKitTestSupport

/// The guest's concurrency tests count the iommufd objects left after their threads
/// are done: a thread that still holds the test's IOAS when `onThreads` returns makes
/// that count see a live IOAS (CI once failed so, `leftoverObjects → [1]`).
@Suite struct OnThreadsTests {
    final class Captured: Sendable {}

    /// Everything `body` captured is released when `onThreads` returns: the threads
    /// have ended, not only said they are done. Repeated, as the old helper (a
    /// DispatchGroup left inside the thread's block) lost this race most times.
    @Test func everythingTheBodyCapturedIsReleasedWhenItReturns() {
        var stillAlive = 0
        for _ in 0..<500 {
            weak var weakRef: Captured?
            do {
                let object = Captured()
                weakRef = object
                onThreads(8) { _ in withExtendedLifetime(object) {} }
            }
            if weakRef != nil { stillAlive += 1 }
        }
        #expect(stillAlive == 0, "in \(stillAlive) of 500 runs a thread still held what the body captured")
    }

    /// Every index runs once, all on threads of their own at the same time: each waits
    /// (blocked, not spinning: a spin on 2 cores starved the whole test run for 12 s)
    /// until all six have arrived, which a pool of fewer threads would never reach.
    @Test func everyIndexRunsOnceAndAllAtOnce() {
        // Atomics only: TSan reports a contended Synchronization.Mutex as a race (README, Reliability).
        let seen = Atomic<Int>(0)  // bit i: index i ran
        let runs = Atomic<Int>(0)
        let arrived = Atomic<Int>(0)
        let allHere = DispatchSemaphore(value: 0)
        let timedOut = Atomic<Int>(0)
        onThreads(6) { i in
            if arrived.add(1, ordering: .sequentiallyConsistent).newValue == 6 {
                for _ in 0..<6 { allHere.signal() }
            }
            if allHere.wait(timeout: .now() + 10) == .timedOut { timedOut.add(1, ordering: .relaxed) }
            seen.bitwiseOr(1 << i, ordering: .relaxed)
            runs.add(1, ordering: .relaxed)
        }
        #expect(seen.load(ordering: .relaxed) == 0b11_1111 && runs.load(ordering: .relaxed) == 6)
        #expect(timedOut.load(ordering: .relaxed) == 0, "not all six ran at once")
    }
}
