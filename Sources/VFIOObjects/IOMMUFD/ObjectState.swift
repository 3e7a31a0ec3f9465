import Synchronization
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Shared and exclusive use of one kernel object, without a lock around the
/// ioctls: any number of operations run at once (shared), while destroy and
/// unmap-all wait for them to finish and keep new ones out (exclusive). Once
/// an exclusive user marks the object dead, every later use is refused.
///
/// One atomic word: bit 63 dead, bit 62 exclusive, the rest the number of
/// shared users. Entering and leaving shared use is one compare-exchange and
/// one subtraction, nothing against a ~25 µs ioctl, and allocates nothing.
/// Exclusive use is preferred over shared (a steady stream of maps cannot
/// starve destroy()). No gated section may await or take the same gate again:
/// waiters spin (yielding the CPU) on a holder that is running.
final class ObjectGate: Sendable {
    private let word = Atomic<UInt64>(0)
    /// The kernel the waits yield and sleep through (the one in force when the object was made).
    private let kernel = Sys.current
    private static let dead: UInt64 = 1 << 63
    private static let exclusive: UInt64 = 1 << 62
    private static let users: UInt64 = exclusive - 1

    /// Enters shared use; false when the object is dead. The uncontended case
    /// (one compare-exchange) is inline; waiting out an exclusive holder is not,
    /// so the callers (every map and unmap) do not keep the gate retained around a
    /// loop of yields.
    @inline(__always)
    func enterShared() -> Bool {
        let v = word.load(ordering: .relaxed)
        if v & (ObjectGate.dead | ObjectGate.exclusive) == 0,
           word.compareExchange(expected: v, desired: v + 1, ordering: .acquiring).exchanged
        {
            return true
        }
        return claim(exclusive: false)
    }

    @inline(__always)
    func leaveShared() {
        word.wrappingSubtract(1, ordering: .releasing)
    }

    /// Waits for the shared users to leave and keeps new ones out; false when
    /// the object is dead (then nothing is held).
    func enterExclusive() -> Bool {
        guard claim(exclusive: true) else { return false }
        var spins = 0
        while word.load(ordering: .acquiring) & ObjectGate.users != 0 { pause(&spins) }
        return true
    }

    /// Waits out an exclusive holder, then counts one more shared user or sets
    /// the exclusive bit; false (and nothing claimed) when the object is dead.
    @inline(never)
    private func claim(exclusive: Bool) -> Bool {
        var v = word.load(ordering: .relaxed)
        var spins = 0
        while true {
            if v & ObjectGate.dead != 0 { return false }
            if v & ObjectGate.exclusive != 0 {
                pause(&spins)
                v = word.load(ordering: .relaxed)
                continue
            }
            let desired = exclusive ? v | ObjectGate.exclusive : v + 1
            let (done, now) = word.compareExchange(expected: v, desired: desired, ordering: .acquiring)
            if done { return true }
            v = now
        }
    }

    /// Ends exclusive use; with `dead` the object is gone for good.
    func leaveExclusive(dead: Bool) {
        word.store(dead ? ObjectGate.dead : 0, ordering: .releasing)
    }

    var isDead: Bool { word.load(ordering: .acquiring) & ObjectGate.dead != 0 }

    /// Gives the CPU away while another thread finishes a short section (one ioctl).
    private func pause(_ spins: inout Int) {
        spins += 1
        if spins < 64 { Sys.yield(kernel) } else { Sys.sleep(kernel, for: .microseconds(50)) }
    }
}

/// The id of one iommufd object and what its owner shares with the context:
/// whether the object still exists, the gate its operations pass, and, for an
/// IOAS, the table of its safe mappings.
///
/// Every operation of an owner resolves the id through ``withID(_:_:)``: after
/// the object was destroyed (by its owner's `destroy()` or by
/// ``IOMMUFD/close()``) it throws a "destroyed" error and never issues an
/// ioctl, because iommufd hands the freed id to the next object allocated.
final class IOMMUObjectState: Sendable {
    let id: UInt32
    /// "IOAS", "HWPT", ...: labels and messages.
    let kind: String
    /// Whether this process allocated the object (and destroys it); false for adopted ids.
    let isOwned: Bool
    let gate = ObjectGate()
    /// The safe mappings of an IOAS: made inert when the IOAS is destroyed.
    let mappings: MappingTable?
    /// The object's own fd (fault queue, vEVENTQ): it holds the object, so it closes first.
    let objectFD: OwnedFD?
    /// The objects of this process this one is built on (each counts it as a dependent while it lives).
    let uses: [IOMMUObjectState]
    /// How many live objects of this process are built on this one.
    let dependents = Atomic<Int>(0)

    init(id: UInt32, kind: String, isOwned: Bool = true, mappings: MappingTable? = nil, objectFD: OwnedFD? = nil,
         uses: [IOMMUObjectState] = [])
    {
        self.id = id
        self.kind = kind
        self.isOwned = isOwned
        self.mappings = mappings
        self.objectFD = objectFD
        self.uses = uses
        for u in uses { u.dependents.add(1, ordering: .relaxed) }
    }

    var label: String { "\(kind) \(id)" }
    var isDestroyed: Bool { gate.isDead }

    /// The error every operation of a destroyed owner throws.
    func destroyedError(_ operation: VFIOError.Operation) -> VFIOError {
        VFIOError.invalid(operation, "\(label) was destroyed; iommufd reuses ids, so its number may already name "
                              + "another object and this owner issues no more requests",
                          object: label, remedies: [.advice("allocate a new \(kind) and use that")])
    }

    /// Runs `body` with the id while the object exists (shared with other
    /// operations, exclusive of destroy); a "destroyed" error otherwise.
    @inline(__always)
    func withID<R>(_ operation: @autoclosure () -> VFIOError.Operation, _ body: (UInt32) throws(VFIOError) -> R)
        throws(VFIOError) -> R
    {
        guard gate.enterShared() else { throw destroyedError(operation()) }
        defer { gate.leaveShared() }
        return try body(id)
    }

    /// Runs `body` with the id while the object exists (shared with other
    /// operations, exclusive of destroy); nil, without running it, once it is gone.
    /// For callers with their own answer to a destroyed object; as a method of the
    /// state (not `owner.state.gate` from outside) it keeps no retain of the gate.
    @inline(__always)
    func ifLive<R>(_ body: (UInt32) throws(VFIOError) -> R) throws(VFIOError) -> R? {
        guard gate.enterShared() else { return nil }
        defer { gate.leaveShared() }
        return try body(id)
    }

    /// Issues `request` on `ctx` with this object's live id written to `arg[keyPath: id]`
    /// (a "destroyed" error, and no ioctl, once the object is gone). When the
    /// ioctl fails, `explain` may give the error's detail: what the errno means
    /// for this request; nil keeps the detail as it is.
    func ioctl<A>(_ request: Request, on ctx: IOMMUFD, _ arg: inout A, id: WritableKeyPath<A, UInt32>,
                  object: @autoclosure () -> String, explain: (VFIOError) -> String? = { _ in nil }) throws(VFIOError) {
        do throws(VFIOError) {
            try withID(.ioctl(request)) { (liveID) throws(VFIOError) in
                arg[keyPath: id] = liveID
                try ctx.ioctl(request, &arg, object: object())
            }
        } catch {
            throw error.explained(explain)
        }
    }

    /// Throws the "destroyed" error if the object is gone (for operations on
    /// the object's own fd, which do not name the id).
    func requireLive(_ operation: @autoclosure () -> VFIOError.Operation) throws(VFIOError) {
        if gate.isDead { throw destroyedError(operation()) }
    }

    /// Destroys the object once: waits for operations in flight, runs
    /// `precondition` (the owner's own refusal, e.g. an IOAS with live
    /// mappings), closes the object's fd, issues `IOMMU_DESTROY`, then marks the
    /// object dead and makes an IOAS's remaining mappings inert. On failure the
    /// object stays usable. A second call does nothing.
    func destroy(_ ctx: IOMMUFD, precondition: () throws(VFIOError) -> Void = {}) throws(VFIOError) {
        guard gate.enterExclusive() else { return }
        var dead = false
        defer {
            if dead {
                mappings?.invalidateAll()
                for u in uses { u.dependents.subtract(1, ordering: .relaxed) }
                ctx.forget(self)
            }
            gate.leaveExclusive(dead: dead)
        }
        if ctx.fd.isClosed {
            // The fd was closed without IOMMUFD.close() (which destroys first): no request can be
            // made any more. A private context took its objects with it; nothing more can be done here.
            dead = true
            return
        }
        try precondition()
        try objectFD?.closeAndSettle()
        try ctx.destroyObject(id, label: label)
        dead = true
    }

    func destroyQuietly(_ ctx: IOMMUFD) {
        try? destroy(ctx)
    }
}

/// The owners whose ids pass an ``IOMMUObjectState`` (every VFIOKit owner of
/// an iommufd object).
protocol IOMMUObjectOwner: AnyObject {
    var state: IOMMUObjectState { get }
}

enum IOMMUObjects {
    /// Runs `body` with the live id of `object` (a VFIOKit owner) or, for an
    /// object VFIOKit does not own (a caller's own conformance), with `fallback`.
    @inline(__always)
    static func withID<R>(of object: AnyObject, fallback: UInt32, _ operation: @autoclosure () -> VFIOError.Operation,
                          _ body: (UInt32) throws(VFIOError) -> R) throws(VFIOError) -> R
    {
        if let owner = object as? any IOMMUObjectOwner { return try owner.state.withID(operation(), body) }
        return try body(fallback)
    }
}

extension IOMMUAttachTarget {
    /// Runs `body` with this object's id while it exists; throws the owner's
    /// "destroyed" error (and issues nothing) after it was destroyed. For code
    /// outside VFIOKit that issues its own requests on an object (the kernel's
    /// selftest commands).
    package func withLiveObjectID<R>(_ operation: VFIOError.Operation, _ body: (UInt32) throws(VFIOError) -> R) throws(VFIOError) -> R {
        try IOMMUObjects.withID(of: self, fallback: objectID, operation, body)
    }
}

extension VFIOError {
    /// This error with `detail`'s answer as its detail when it gives one (what
    /// the errno means for the request that failed); unchanged otherwise.
    func explained(_ detail: (VFIOError) -> String?) -> VFIOError {
        var e = self
        if let d = detail(e) { e.detail = d }
        return e
    }
}
