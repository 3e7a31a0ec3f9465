#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What one thread of ``onThreads(_:_:)`` runs: the body and its index.
private final class ThreadWork {
    let body: @Sendable (Int) -> Void
    let index: Int
    init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) { self.body = body; self.index = index }
}

/// Runs `body(i)` for i in 0..<n, each on a thread of its own, all at once (not on a
/// pool, which may run them one after another), and returns when all threads have
/// ended: joined, with everything `body` captured released. (Tests count the kernel
/// objects left afterwards; a thread that still held an owner would keep one alive.)
public func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    var threads: [pthread_t] = []
    for i in 0..<n {
        var thread = pthread_t()
        // Safety: the work is retained once here and taken (released) exactly once, by
        // its thread, before the thread returns; so pthread_join below returns only
        // after the last reference is gone.
        let work = Unmanaged.passRetained(ThreadWork(body, i)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            let work = Unmanaged<ThreadWork>.fromOpaque(raw!).takeRetainedValue()
            work.body(work.index)
            return nil
        }, work)
        precondition(rc == 0, "pthread_create: \(rc)")
        threads.append(thread)
    }
    for t in threads { precondition(pthread_join(t, nil) == 0) }
}
