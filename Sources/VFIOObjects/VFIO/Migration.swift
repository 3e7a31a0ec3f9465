import CVFIO
import VFIOSystem

// The migration uapi of include/uapi/linux/vfio.h (VFIO_DEVICE_FEATURE_MIGRATION,
// MIG_DEVICE_STATE, MIG_DATA_SIZE, VFIO_MIG_GET_PRECOPY_INFO) and the state
// machine its comment documents, whose combination transitions the kernel
// walks in vfio_mig_get_next_state (drivers/vfio/vfio_main.c).

extension VFIOError.Step {
    /// Moving a device's migration state, refused by VFIOKit before the kernel is asked.
    public static let changeMigrationState: Self = "change migration state"
    /// Reading or writing a migration data stream the wrong way.
    public static let migrationData: Self = "migration data"
}

extension MigrationState: CustomStringConvertible {
    /// Every state, ERROR included, in the uapi's numbering.
    public static let all: [MigrationState] = [.error, .stop, .running, .stopCopy, .resuming, .runningP2P, .preCopy, .preCopyP2P]

    /// The kernel's name without its prefix (`STOP_COPY` for `VFIO_DEVICE_STATE_STOP_COPY`).
    public var description: String {
        switch self {
        case .error: "ERROR"
        case .stop: "STOP"
        case .running: "RUNNING"
        case .stopCopy: "STOP_COPY"
        case .resuming: "RESUMING"
        case .runningP2P: "RUNNING_P2P"
        case .preCopy: "PRE_COPY"
        case .preCopyP2P: "PRE_COPY_P2P"
        }
    }

    /// The state by its kernel name (`STOP_COPY`; `stop-copy` and `stopcopy` work too).
    public init?(name: String) {
        func key(_ s: String) -> String { String(s.uppercased().filter { $0 != "_" && $0 != "-" }) }
        guard let s = MigrationState.all.first(where: { key($0.description) == key(name) }) else { return nil }
        self = s
    }

    /// PRE_COPY, PRE_COPY_P2P and STOP_COPY: the saving group, whose states
    /// share one data transfer session (moves inside it keep the data fd).
    public var isSaving: Bool { self == .preCopy || self == .preCopyP2P || self == .stopCopy }

    /// The migration flags a device must report for this state to exist on it
    /// (the kernel's `state_flags_table`: RUNNING, STOP, STOP_COPY and
    /// RESUMING need STOP_COPY, which every migratable device has; RUNNING_P2P
    /// adds P2P; PRE_COPY adds PRE_COPY; PRE_COPY_P2P both). ERROR is never
    /// asked for and needs nothing here.
    public var requiredCapabilities: MigrationCapabilities {
        switch self {
        case .error: []
        case .running, .stop, .stopCopy, .resuming: .stopCopy
        case .runningP2P: [.stopCopy, .p2p]
        case .preCopy: [.stopCopy, .preCopy]
        case .preCopyP2P: [.stopCopy, .p2p, .preCopy]
        }
    }
}

/// What `VFIO_DEVICE_FEATURE_MIGRATION` reports (`VFIO_MIGRATION_*` flags).
public struct MigrationCapabilities: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    /// Flags from their raw value.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `VFIO_MIGRATION_STOP_COPY`: STOP, STOP_COPY and RESUMING, the minimum of a migratable device.
    public static let stopCopy = MigrationCapabilities(rawValue: VFIO_MIGRATION_STOP_COPY)
    /// `VFIO_MIGRATION_P2P`: RUNNING_P2P (and PRE_COPY_P2P with ``preCopy``).
    public static let p2p = MigrationCapabilities(rawValue: VFIO_MIGRATION_P2P)
    /// `VFIO_MIGRATION_PRE_COPY`: PRE_COPY (and PRE_COPY_P2P with ``p2p``).
    public static let preCopy = MigrationCapabilities(rawValue: VFIO_MIGRATION_PRE_COPY)

    /// The states a device with these flags can be put in (ERROR is never asked for).
    public var states: [MigrationState] {
        MigrationState.all.filter { $0 != .error && isSuperset(of: $0.requiredCapabilities) }
    }

    /// `STOP_COPY|P2P|PRE_COPY`, unknown bits in hex, `none` for no flag.
    public var description: String {
        var names: [String] = []
        if contains(.stopCopy) { names.append("STOP_COPY") }
        if contains(.p2p) { names.append("P2P") }
        if contains(.preCopy) { names.append("PRE_COPY") }
        let rest = rawValue & ~(Self.stopCopy.rawValue | Self.p2p.rawValue | Self.preCopy.rawValue)
        if rest != 0 { names.append("0x" + String(rest, radix: 16)) }
        return names.isEmpty ? "none" : names.joined(separator: "|")
    }
}

/// The migration state machine as include/uapi/linux/vfio.h documents it.
///
/// Its arcs (the moves a driver implements), and the path of a combination
/// transition (a move with no arc of its own), which the uapi defines as the
/// shortest path over the arcs that has no saving state (PRE_COPY,
/// PRE_COPY_P2P, STOP_COPY) in its interior, except that a move from one
/// saving state to another stays in the saving group so the data session
/// survives; STOP_COPY never goes back to PRE_COPY or PRE_COPY_P2P. A state
/// the device does not support is skipped over ("Arcs touching optional and
/// unsupported states are skipped over"): the driver sees the arc from the
/// state before it to the one after. MdevGuestTests checks every pair against
/// the kernel itself, on mtty.
public enum MigrationFSM {
    /// Every arc of the full machine (all optional states supported).
    public static let arcs: [(from: MigrationState, to: MigrationState)] = [
        (.running, .runningP2P), (.runningP2P, .running), (.runningP2P, .stop), (.stop, .runningP2P),
        (.stop, .stopCopy), (.stopCopy, .stop), (.stop, .resuming), (.resuming, .stop),
        (.running, .preCopy), (.preCopy, .running), (.runningP2P, .preCopyP2P), (.preCopyP2P, .runningP2P),
        (.preCopy, .preCopyP2P), (.preCopyP2P, .preCopy), (.preCopyP2P, .stopCopy),
    ]

    /// Why the move is not possible, or nil when it is.
    public static func refusal(from: MigrationState, to: MigrationState, capabilities: MigrationCapabilities) -> String? {
        if to == .error { return "ERROR is not a state one can ask for (a failed move may leave the device in it)" }
        if from == .error { return "the device is in ERROR: only VFIO_DEVICE_RESET brings it back (to RUNNING)" }
        for s in [from, to] where !capabilities.isSuperset(of: s.requiredCapabilities) {
            return "the device does not support \(s) (its migration flags are \(capabilities); \(s) needs "
                + "\(s.requiredCapabilities))"
        }
        if fullPath(from: from, to: to) == nil {
            return "the uapi has no path from \(from) to \(to) (STOP_COPY does not go back to pre-copy; "
                + "leave the saving group through STOP first)"
        }
        return nil
    }

    /// The states the kernel moves the device through after `from`, ending
    /// with `to` (empty when they are equal); nil when the move is not allowed
    /// (``refusal(from:to:capabilities:)`` says why).
    public static func path(from: MigrationState, to: MigrationState,
                            capabilities: MigrationCapabilities) -> [MigrationState]? {
        guard refusal(from: from, to: to, capabilities: capabilities) == nil, let full = fullPath(from: from, to: to)
        else { return nil }
        return full.filter { capabilities.isSuperset(of: $0.requiredCapabilities) }
    }

    /// Whether the move hands out a new data fd: it enters the saving group
    /// from outside it, or enters RESUMING. Moves inside the saving group keep
    /// the session's fd (and return none).
    public static func startsDataSession(from: MigrationState, to: MigrationState) -> Bool {
        (to.isSaving && !from.isSaving) || (to == .resuming && from != .resuming)
    }

    /// Breadth-first over the full machine, under the interior rule above.
    static func fullPath(from: MigrationState, to: MigrationState) -> [MigrationState]? {
        if from == to { return [] }
        guard from != .error, to != .error else { return nil }
        let insideSavingGroup = from.isSaving && to.isSaving
        var previous: [MigrationState: MigrationState] = [from: from]
        var frontier = [from]
        while !frontier.isEmpty {
            var next: [MigrationState] = []
            for s in frontier {
                for arc in arcs where arc.from == s && previous[arc.to] == nil {
                    let t = arc.to
                    if t != to && t.isSaving != insideSavingGroup { continue }
                    previous[t] = s
                    if t == to {
                        var out = [t]
                        var cur = s
                        while cur != from, let p = previous[cur] {
                            out.insert(cur, at: 0)
                            cur = p
                        }
                        return out
                    }
                    next.append(t)
                }
            }
            frontier = next
        }
        return nil
    }
}

/// What `VFIO_MIG_GET_PRECOPY_INFO` estimates in a pre-copy state.
public struct PrecopyInfo: Sendable, Equatable {
    /// Initial data still to be read (it should reach zero before STOP_COPY).
    public var initialBytes: UInt64
    /// Device state that changed since it was read.
    public var dirtyBytes: UInt64
    /// `VFIO_PRECOPY_INFO_REINIT`: new initial data (only after ``VFIODevice/enablePrecopyInfoV2()``).
    public var reinit: Bool
}

/// The data fd of a migration session: the device's state read out while
/// saving (PRE_COPY, PRE_COPY_P2P, STOP_COPY), or written in while RESUMING.
///
/// The stream is opaque and must be kept in order; how it is cut into reads
/// and writes does not matter. Closing it ends the session from the user's side.
public final class MigrationDataStream: Sendable {
    /// Which way the data goes.
    public enum Direction: String, Sendable {
        /// Read from the device (PRE_COPY, PRE_COPY_P2P, STOP_COPY).
        case saving
        /// Written to the device (RESUMING).
        case resuming
    }

    /// What one read gave.
    public enum ReadResult: Sendable, Equatable {
        /// This many bytes.
        case bytes(Int)
        /// read(2) returned 0: in STOP_COPY, the whole state was read; in
        /// PRE_COPY, nothing more for now (mtty answers 0 there).
        case endOfData
        /// ENOMSG (the uapi's "no more data for now" in PRE_COPY) or EAGAIN.
        case noDataNow
    }

    /// The data fd.
    public let fd: OwnedFD
    /// Read (saving) or written (resuming).
    public let direction: Direction

    package init(fd: OwnedFD, direction: Direction) {
        self.fd = fd
        self.direction = direction
    }

    /// One read(2) of the data fd.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(VFIOError) -> ReadResult {
        guard direction == .saving else {
            throw VFIOError.invalid(.step(.migrationData), "a RESUMING data fd is written, not read", object: fd.label)
        }
        do throws(VFIOError) {
            guard let n = try fd.read(buffer, object: fd.label) else { return .noDataNow }
            return n == 0 ? .endOfData : .bytes(n)
        } catch where error.errno == .noMessage {
            return .noDataNow
        }
    }

    /// Reads until the driver has nothing more now (end of data, or ENOMSG in
    /// PRE_COPY), `chunk` bytes at a time; at most `limit` bytes.
    public func readAvailable(chunk: Int = 64 << 10, limit: Int = 1 << 30) throws(VFIOError) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: max(1, chunk))
        while out.count < limit {
            let want = min(buffer.count, limit - out.count)
            let r = try buffer.withUnsafeMutableBytes { b in
                Result { () throws(VFIOError) -> ReadResult in
                    try read(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<want]))
                }
            }.get()
            guard case .bytes(let n) = r else { return out }
            out.append(contentsOf: buffer[0..<n])
        }
        throw VFIOError.invalid(.step(.migrationData), "the migration stream is longer than the \(limit) bytes asked for",
                                object: fd.label, remedies: [.advice("read it in parts with read(into:)")])
    }

    /// Writes all of `bytes` (RESUMING).
    public func write(_ bytes: [UInt8]) throws(VFIOError) {
        guard direction == .resuming else {
            throw VFIOError.invalid(.step(.migrationData), "a saving data fd is read, not written", object: fd.label)
        }
        var done = 0
        while done < bytes.count {
            let n = try bytes[done...].withUnsafeBytes { b in
                Result { () throws(VFIOError) -> Int in try fd.write(b, object: fd.label) }
            }.get()
            guard n > 0 else {
                throw VFIOError.invalid(.step(.migrationData), "the driver took no bytes (\(done) of \(bytes.count) written)",
                                        object: fd.label)
            }
            done += n
        }
    }

    /// The driver's estimate of what is left to read in PRE_COPY or
    /// PRE_COPY_P2P (EINVAL in any other state). The corresponding ioctl is
    /// `VFIO_MIG_GET_PRECOPY_INFO`, on the data fd.
    public func precopyInfo() throws(VFIOError) -> PrecopyInfo {
        var arg = vfio_precopy_info()
        arg.argsz = UInt32(MemoryLayout<vfio_precopy_info>.size)
        do throws(VFIOError) {
            _ = try fd.ioctl(.vfioMigGetPrecopyInfo, &arg, object: fd.label)
        } catch {
            var e = error
            if e.errno == .invalidArgument {
                e.detail = "the device is not in PRE_COPY or PRE_COPY_P2P (the only states with pre-copy info)"
            }
            throw e
        }
        return PrecopyInfo(initialBytes: arg.initial_bytes, dirtyBytes: arg.dirty_bytes,
                           reinit: arg.flags & VFIO_PRECOPY_INFO_REINIT != 0)
    }

    /// Closes the data fd (ends the session from the user's side); idempotent.
    public func close() throws(VFIOError) { try fd.close() }
}

extension VFIODevice {
    /// The migration flags as a number (``migrationCapabilities()`` as a set);
    /// throws "not supported by this device" for devices without migration.
    /// `VFIO_DEVICE_FEATURE_MIGRATION`.
    public func migrationFlags() throws(VFIOError) -> UInt64 { try migrationCapabilities().rawValue }

    /// The migration flags; throws "not supported by this device" for devices
    /// without migration. `VFIO_DEVICE_FEATURE_MIGRATION`.
    public func migrationCapabilities() throws(VFIOError) -> MigrationCapabilities {
        let b = try getFeature(VFIO_DEVICE_FEATURE_MIGRATION, count: 8)
        return MigrationCapabilities(rawValue: b.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
    }

    /// The device's migration state. `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (GET).
    public func migrationState() throws(VFIOError) -> MigrationState {
        let b = try getFeature(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, count: 8)
        let raw = b.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        guard let s = MigrationState(rawValue: raw) else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "the device reports migration state \(raw), which the "
                                    + "uapi does not define", object: label)
        }
        return s
    }

    /// Moves the device to `state`, and returns the data stream when the move
    /// starts a session (entering PRE_COPY, PRE_COPY_P2P or STOP_COPY from
    /// outside the saving group: read it; entering RESUMING: write it). Moves
    /// inside the saving group keep the stream handed out before.
    ///
    /// The kernel walks a combination transition itself; its path is
    /// ``MigrationFSM/path(from:to:capabilities:)``, checked here first, so a
    /// move the uapi does not allow is refused with the reason and without
    /// asking the kernel. A failure names the state the device was in, the
    /// one asked for, the states between, and the state it is in afterwards.
    /// The corresponding ioctl is `VFIO_DEVICE_FEATURE` with
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` (SET).
    @discardableResult
    public func setMigrationState(_ state: MigrationState) throws(VFIOError) -> MigrationDataStream? {
        let caps = try migrationCapabilities()
        let current = try migrationState()
        guard let path = MigrationFSM.path(from: current, to: state, capabilities: caps) else {
            let why = MigrationFSM.refusal(from: current, to: state, capabilities: caps) ?? "not allowed"
            throw VFIOError.invalid(.step(.changeMigrationState), "cannot move the device from \(current) to \(state): \(why)",
                                    object: label,
                                    remedies: current == .error ? [.advice("reset the device (VFIO_DEVICE_RESET)")] : [])
        }
        do throws(VFIOError) {
            if let fd = try setMigrationStateUnchecked(state) {
                return MigrationDataStream(fd: fd, direction: state == .resuming ? .resuming : .saving)
            }
            if MigrationFSM.startsDataSession(from: current, to: state) {
                throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "moving from \(current) to \(state) starts a data "
                                        + "session, but the driver returned no data fd", object: label)
            }
            return nil
        } catch {
            var e = error
            let now = (try? migrationState()).map { "the device is now in \($0)" } ?? "its state cannot be read now"
            let route = path.count > 1 ? " through " + path.dropLast().map(\.description).joined(separator: ", ") : ""
            e.detail = "moving from \(current) to \(state)\(route) failed; \(now)" + (e.detail.map { " (\($0))" } ?? "")
            if e.remedies.isEmpty {
                e.remedies = [.advice("the driver refused a step of the move: from ERROR only VFIO_DEVICE_RESET returns "
                                      + "to RUNNING; otherwise move back to RUNNING or STOP")]
            }
            throw e
        }
    }

    /// The raw SET of the migration state, with the kernel's checks only
    /// (tests compare them with ``MigrationFSM``). Returns the data fd, if any.
    package func setMigrationStateUnchecked(_ state: MigrationState) throws(VFIOError) -> OwnedFD? {
        var payload = [UInt8](repeating: 0, count: 8)
        payload.withUnsafeMutableBytes {
            $0.storeBytes(of: state.rawValue, as: UInt32.self)
            $0.storeBytes(of: Int32(-1), toByteOffset: 4, as: Int32.self)
        }
        let out = try runFeature(flags: VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | VFIO_DEVICE_FEATURE_SET, payload: payload,
                                 object: "set")
        let dataFD = out.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) }
        return dataFD >= 0 ? OwnedFD(dataFD, label: "\(label) migration data (\(state))", kernel: fd.kernel) : nil
    }

    /// The driver's estimate of the bytes STOP_COPY will stream.
    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
    public func migrationDataSize() throws(VFIOError) -> UInt64 {
        let b = try getFeature(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, count: 8)
        return b.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// Opts in to `VFIO_PRECOPY_INFO_REINIT` in ``MigrationDataStream/precopyInfo()``
    /// (devices with PRE_COPY). `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`.
    public func enablePrecopyInfoV2() throws(VFIOError) {
        try setFeature(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, payload: [])
    }
}
