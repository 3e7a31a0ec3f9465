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

    @Test func everyIndexRunsOnceAndAllAtOnce() {
        let seen = Mutex<[Int]>([])
        let arrived = Atomic<Int>(0)
        onThreads(6) { i in
            arrived.add(1, ordering: .relaxed)
            // All six are running at once: each waits for the others (a pool of fewer would hang; bounded).
            let deadline = ContinuousClock.now + .seconds(10)
            while arrived.load(ordering: .relaxed) < 6 && ContinuousClock.now < deadline {}
            seen.withLock { $0.append(i) }
        }
        #expect(seen.withLock { $0.sorted() } == Array(0..<6))
        #expect(arrived.load(ordering: .relaxed) == 6)
    }
}
