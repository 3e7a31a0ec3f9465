import Synchronization
import VFIOSystem

/// The safe mappings (VFIODMA's `DMAMapping` values) of one address space, an IOAS or
/// a VFIO container: which of them still own their range in the kernel.
///
/// A mapping is registered when the kernel mapped it and gets a slot; the slot
/// is given back exactly once, by the mapping's `unmap()` or deinit (a
/// `DMAMapping` is noncopyable). In between, unmap-all (or the IOAS's
/// destruction by ``IOMMUFD/close()``) can make it *inert*: the kernel already
/// unmapped it, so its owner must issue no unmap, which at the same IOVA could
/// hit a newer mapping, and may free its buffer.
///
/// Storage is reserved up front and slots are reused (the free slots are a
/// list threaded through the entries), so a map + unmap pair allocates nothing
/// once the table has grown to the number of mappings alive at once. The lock is held for a few loads and stores, never across an ioctl.
final class MappingTable: Sendable {
    enum SlotState: UInt8 {
        case free, live, unmapping, inert
    }

    struct Entry {
        var iova: UInt64
        var length: UInt64
        var state: SlotState
        /// For a free entry: the next free slot (-1: none).
        var nextFree: Int32 = -1
        var last: UInt64 { iova &+ (length &- 1) }
    }

    struct Storage {
        var entries: [Entry] = []
        /// The first free slot (-1: none); each free entry names the next. A list in the
        /// entries themselves rather than an array of free slots: one array to mutate
        /// (and check for uniqueness) per step instead of two.
        var freeHead: Int32 = -1
        /// Entries live or being unmapped.
        var live = 0

        /// Marks `slot` free and puts it at the head of the free list.
        @inline(__always)
        mutating func free(_ slot: Int32) {
            Storage.link(&entries[Int(slot)], to: freeHead)  // one access to the element: one uniqueness check
            freeHead = slot
        }

        @inline(__always)
        private static func link(_ entry: inout Entry, to next: Int32) {
            entry.state = .free
            entry.nextFree = next
        }
    }

    private let storage: Mutex<Storage>
    /// The kernel ``ownedOverlapping(iova:length:)`` yields and sleeps through (the one in force when the table was made).
    private let kernel = Sys.current

    init(capacity: Int = 64) {
        var s = Storage()
        s.entries.reserveCapacity(capacity)
        storage = Mutex(s)
    }

    /// Mappings that still own their range (live or being unmapped).
    var liveCount: Int { storage.withLock { $0.live } }

    /// Records a mapping the kernel just made; returns its slot.
    @inline(__always)
    func register(iova: UInt64, length: UInt64) -> Int32 {
        storage.withLock { s in
            s.live += 1
            let entry = Entry(iova: iova, length: length, state: .live)
            let slot = s.freeHead
            if slot >= 0 {
                s.freeHead = s.entries[Int(slot)].nextFree
                s.entries[Int(slot)] = entry
                return slot
            }
            s.entries.append(entry)
            return Int32(s.entries.count - 1)
        }
    }

    /// Starts the owner's unmap of `slot`: true when the mapping is live (the
    /// caller unmaps, then calls ``finishUnmap(_:)``); false when it is inert
    /// (unmapped by someone else already: the slot is released, nothing to do).
    @inline(__always)
    func beginUnmap(_ slot: Int32) -> Bool {
        storage.withLock { s in
            let i = Int(slot)
            switch s.entries[i].state {
            case .live:
                s.entries[i].state = .unmapping
                return true
            case .inert:
                s.free(slot)
                return false
            case .free, .unmapping:
                preconditionFailure("mapping slot \(slot) given back twice")
            }
        }
    }

    /// Ends the owner's unmap of `slot`, whatever the kernel said: the table
    /// no longer tracks the range (after a failure the caller may unmap it with
    /// a raw unmap once what held it is gone).
    @inline(__always)
    func finishUnmap(_ slot: Int32) {
        storage.withLock { s in
            s.free(slot)
            s.live -= 1
        }
    }

    /// Gives back the slot of a mapping whose address space is gone (every
    /// entry was made inert then); true when it was inert.
    func release(_ slot: Int32) -> Bool {
        storage.withLock { s in
            let i = Int(slot)
            let wasInert = s.entries[i].state == .inert
            if s.entries[i].state == .live || s.entries[i].state == .unmapping { s.live -= 1 }
            s.free(slot)
            return wasInert
        }
    }

    /// Marks every live mapping inert: the kernel unmapped them all. Called
    /// with the address space held exclusively (no unmap in flight).
    func invalidateAll() {
        storage.withLock { s in
            for i in s.entries.indices where s.entries[i].state == .live { s.entries[i].state = .inert }
            s.live = 0
        }
    }

    /// The live mappings (slot, IOVA, length), to find out which a failed
    /// unmap-all took. Called with the address space held exclusively.
    func liveEntries() -> [(slot: Int32, iova: UInt64, length: UInt64)] {
        storage.withLock { s in
            s.entries.indices.compactMap { i in
                s.entries[i].state == .live ? (Int32(i), s.entries[i].iova, s.entries[i].length) : nil
            }
        }
    }

    /// Marks one live mapping inert (the kernel no longer maps it).
    func invalidate(_ slot: Int32) {
        storage.withLock { s in
            guard s.entries[Int(slot)].state == .live else { return }
            s.entries[Int(slot)].state = .inert
            s.live -= 1
        }
    }

    /// ``liveOverlapping(iova:length:)`` for a caller's unmap of its own range: when the
    /// only overlapping safe mappings are being unmapped by their owners (marked before
    /// the owner's kernel unmap, freed after it), waits for those unmaps to end first. In
    /// between, the kernel may already have given the IOVAs to a new mapping of the
    /// caller's (a kernel-chosen IOVA), which refusing would leave mapped. Such an unmap
    /// ends promptly (its thread is in or just past one ioctl); after 5 s the mapping
    /// counts as owned, as before.
    @inline(__always)
    func ownedOverlapping(iova: UInt64, length: UInt64) -> Int {
        guard length > 0 else { return 0 }
        let last = iova.addingReportingOverflow(length - 1).overflow ? UInt64.max : iova + (length - 1)
        let (live, unmapping) = overlapping(iova: iova, last: last)
        if unmapping == 0 || live > 0 { return live + unmapping }
        return waitForOwnersUnmaps(iova: iova, last: last)
    }

    /// The rare case of ``ownedOverlapping(iova:length:)``, out of line: every raw
    /// unmap passes there, and reading the clock up front cost about 130 of an IOAS
    /// map + unmap's ~1,050 user instructions (callgrind, vfiokit-bench).
    @inline(never)
    private func waitForOwnersUnmaps(iova: UInt64, last: UInt64) -> Int {
        var spins = 0
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            spins += 1
            if spins < 64 { Sys.yield(kernel) } else { Sys.sleep(kernel, for: .microseconds(50)) }
            let (live, unmapping) = overlapping(iova: iova, last: last)
            if unmapping == 0 || live > 0 || ContinuousClock.now > deadline { return live + unmapping }
        }
    }

    /// The live and the being-unmapped mappings that overlap `[iova, last]`.
    @inline(__always)
    private func overlapping(iova: UInt64, last: UInt64) -> (live: Int, unmapping: Int) {
        storage.withLock { s -> (Int, Int) in
            guard s.live > 0 else { return (0, 0) }
            var live = 0, unmapping = 0
            for e in s.entries where e.iova <= last && iova <= e.last {
                if e.state == .live { live += 1 } else if e.state == .unmapping { unmapping += 1 }
            }
            return (live, unmapping)
        }
    }

    /// How many live mappings overlap `[iova, iova + length)`.
    @inline(__always)
    func liveOverlapping(iova: UInt64, length: UInt64) -> Int {
        guard length > 0 else { return 0 }
        let last = iova.addingReportingOverflow(length - 1).overflow ? UInt64.max : iova + (length - 1)
        return storage.withLock { s in
            guard s.live > 0 else { return 0 }
            var n = 0
            for e in s.entries where (e.state == .live || e.state == .unmapping) && e.iova <= last && iova <= e.last {
                n += 1
            }
            return n
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension MappingTable {
    /// A short unmap: asked for `length` bytes at `iova`, the kernel unmapped
    /// `done`. By default of exactly a safe mapping's range; a raw unmap says
    /// what the amount means for it (`meaning`) and its own fix.
    static func shortUnmap(
        _ operation: VFIOError.Operation, _ object: String, iova: UInt64, length: UInt64, done: UInt64,
        meaning: String = "the mapping was not there as mapped: something else unmapped or changed the range",
        fix: String = "unmap safe mappings only through their DMAMapping; once whatever holds the range is gone, unmap "
            + "it with a raw unmap (IOAS.unmap(iova:length:), VFIOContainer.unmapDMA(iova:length:)) or unmapAll()"
    ) -> VFIOError {
        VFIOError(operation: operation, object: object,
                  detail: "short unmap: asked for \(length) bytes at IOVA 0x\(String(iova, radix: 16)), the kernel unmapped "
                      + "\(done) (\(meaning))",
                  remedies: [.advice(fix)])
    }

    /// Unmaps a safe mapping's range once: runs `unmap` (the raw unmap of
    /// `[iova, iova + length)`) unless an unmap of `slot` already began, and
    /// throws when it unmapped less than `length`. False when it did not run.
    @inline(__always)
    func unmapOnce(_ slot: Int32, iova: UInt64, length: UInt64, _ operation: VFIOError.Operation,
                   object: @autoclosure () -> String, _ unmap: () throws(VFIOError) -> UInt64) throws(VFIOError) -> Bool {
        guard beginUnmap(slot) else { return false }
        let done: UInt64
        do throws(VFIOError) {
            done = try unmap()
        } catch {
            finishUnmap(slot)
            throw error
        }
        finishUnmap(slot)
        if done != length {
            throw MappingTable.shortUnmap(operation, object(), iova: iova, length: length, done: done)
        }
        return true
    }

    /// After an unmap-all failed: finds out which live mappings it took.
    ///
    /// Both kernels check their arguments before unmapping anything; only
    /// EBUSY (a range pinned by an access or a HW queue) or EDEADLK stop them
    /// part way, and then they do not say how far they got. With the address
    /// space held exclusively (no map of this process can come in between),
    /// each live mapping's exact range is unmapped again: the bytes back or
    /// "nothing there" mean it is gone now (inert); any other error means it is
    /// still mapped and stays with its ``DMAMapping``. Returns `error` with
    /// what happened.
    func resolveFailedUnmapAll(_ error: VFIOError, unmapOne: (UInt64, UInt64) throws(VFIOError) -> UInt64) -> VFIOError {
        guard let code = error.errno, code == .resourceBusy || code == .deadlock else { return error }
        let live = liveEntries()
        guard !live.isEmpty else { return error }
        var gone = 0
        for m in live {
            do throws(VFIOError) {
                _ = try unmapOne(m.iova, m.length)
                invalidate(m.slot)
                gone += 1
            } catch where error.errno == .noSuchFileOrDirectory {
                invalidate(m.slot)
                gone += 1
            } catch {
                continue
            }
        }
        var e = error
        e.detail = (e.detail.map { $0 + ". " } ?? "")
            + "The kernel stopped part way without saying how far it got, so VFIOKit unmapped the DMAMapping ranges "
            + "one by one: \(gone) of \(live.count) are unmapped now (those mappings have nothing left to unmap), "
            + "\(live.count - gone) still mapped (they stay with their DMAMapping)"
        return e
    }
}

extension MappingTable {
    /// Refuses a raw unmap of `[iova, iova + length)` (the kernel is not asked)
    /// when the range holds mappings that ``DMAMapping`` values own: their owners
    /// would unmap the same IOVAs again later.
    /// `object` is built only for the error: a container's label is a heap string, and this
    /// runs on every raw unmap (the type1 bench showed one allocation per map + unmap).
    @inline(__always)
    func refuseRawUnmapOfOwned(iova: UInt64, length: UInt64, _ operation: VFIOError.Operation,
                               object: @autoclosure () -> String) throws(VFIOError)
    {
        let owned = ownedOverlapping(iova: iova, length: length)
        guard owned > 0 else { return }
        throw MappingTable.ownedRangeError(iova: iova, length: length, owned: owned, operation, object: object())
    }

    @inline(never)
    static func ownedRangeError(iova: UInt64, length: UInt64, owned: Int, _ operation: VFIOError.Operation,
                                object: String) -> VFIOError
    {
        VFIOError.invalid(
            operation,
            "IOVA 0x\(String(iova, radix: 16)) length \(length) holds \(owned) mapping\(owned == 1 ? "" : "s") owned by "
                + "DMAMapping values (the kernel was not asked): unmapped here, their owners would later unmap the "
                + "same IOVAs again, which may by then belong to a newer mapping", object: object,
            remedies: [.advice("unmap those with DMAMapping.unmap() or drop them; unmapAll() unmaps everything and leaves them inert")])
    }
}
