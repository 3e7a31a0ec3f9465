import Synchronization

/// A file descriptor with exactly one owner object.
///
/// Every VFIOKit owner (``IOMMUFD``, ``VFIODevice``, ``VFIOGroup``,
/// ``VFIOContainer``, event fds) keeps one of these. `close()` reports errors
/// and is idempotent; `deinit` closes what was not closed and drops the error,
/// since a deinit cannot throw. close is never retried (EINTR leaves it closed).
public final class OwnedFD: Sendable {
    /// The descriptor number. Valid until ``close()``.
    public let raw: Int32
    /// What the fd is, for errors: a path or a description.
    public let label: String
    private let closed = Atomic<Bool>(false)

    init(_ raw: Int32, label: String) {
        self.raw = raw
        self.label = label
    }

    /// Opens `path` read-write and owns the result.
    static func open(_ path: String, flags: Int32 = O_RDWR) throws(VFIOError) -> OwnedFD {
        OwnedFD(try Sys.open(path, flags), label: path)
    }

    /// Whether ``close()`` has run.
    public var isClosed: Bool { closed.load(ordering: .acquiring) }

    /// The fd, or an error naming `operation` when the owner was closed.
    @inline(__always)
    func get(_ operation: @autoclosure () -> String) throws(VFIOError) -> Int32 {
        if closed.load(ordering: .relaxed) {
            throw VFIOError.invalid(operation(), "the fd was already closed", object: label,
                                    hint: "keep the owner open while it is used")
        }
        return raw
    }

    /// Closes the fd; a second call does nothing.
    public func close() throws(VFIOError) {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try Sys.close(raw, object: label)
    }

    /// Gives up ownership without closing (the fd now belongs to the caller).
    func release() -> Int32 {
        closed.store(true, ordering: .releasing)
        return raw
    }

    deinit {
        if !closed.load(ordering: .acquiring) { try? Sys.close(raw, object: label) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
