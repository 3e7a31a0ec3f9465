import Testing
import VFIOKit

/// An actor awaiting interrupts is back on its own executor after every `next()`
/// that suspended: the waits are `nonisolated(nonsending)` and make their
/// continuation without a hop (EventFD.swift, `CountHandoff.wait()`), so this
/// holds the compiler's hop back to the caller's isolation. A count read off the
/// actor would trap in `preconditionIsolated` (the run fails). Real eventfds.
@Suite struct InterruptIsolationTests {
    actor Consumer {
        var counts = 0

        /// Takes `n` counts from `e`, each awaited (another task signals), checking isolation after each.
        func take(_ n: Int, from e: EventFD, scoped: Bool) async -> Int {
            if scoped {
                await e.withInterrupts { sequence in
                    var it = sequence.makeAsyncIterator()
                    for _ in 0..<n where await it.next() != nil {
                        self.preconditionIsolated("back on the actor after next() in withInterrupts")
                        counts += 1
                    }
                }
            } else {
                var it = e.interrupts().makeAsyncIterator()
                for _ in 0..<n where await it.next() != nil {
                    self.preconditionIsolated("back on the actor after next()")
                    counts += 1
                }
            }
            return counts
        }
    }

    @Test(arguments: [false, true]) func anActorStaysIsolatedAcrossNext(scoped: Bool) async throws {
        let e = try EventFD()
        let signaller = Task {
            while !Task.isCancelled {
                try? e.signal(1)
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
        defer { signaller.cancel() }
        let got = await Consumer().take(50, from: e, scoped: scoped)
        #expect(got == 50)
    }
}
