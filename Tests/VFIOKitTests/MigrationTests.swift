import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

/// The migration state machine against the kernel's own: its table
/// `vfio_from_fsm_table` and the skipping loop of `vfio_mig_get_next_state`
/// (drivers/vfio/vfio_main.c, Linux 7.2), copied here as the oracle.
@Suite struct MigrationFSMTests {
    // S(from) -> [to: next step], in the uapi's numbers: ERROR 0, STOP 1, RUNNING 2,
    // STOP_COPY 3, RESUMING 4, RUNNING_P2P 5, PRE_COPY 6, PRE_COPY_P2P 7.
    static let table: [UInt32: [UInt32: UInt32]] = [
        1: [1: 1, 2: 5, 6: 5, 7: 5, 3: 3, 4: 4, 5: 5, 0: 0],
        2: [1: 5, 2: 2, 6: 6, 7: 5, 3: 5, 4: 5, 5: 5, 0: 0],
        6: [1: 2, 2: 2, 6: 6, 7: 7, 3: 7, 4: 2, 5: 2, 0: 0],
        7: [1: 5, 2: 5, 6: 6, 7: 7, 3: 3, 4: 5, 5: 5, 0: 0],
        3: [1: 1, 2: 1, 6: 0, 7: 0, 3: 3, 4: 1, 5: 1, 0: 0],
        4: [1: 1, 2: 1, 6: 1, 7: 1, 3: 1, 4: 4, 5: 1, 0: 0],
        5: [1: 1, 2: 2, 6: 2, 7: 7, 3: 1, 4: 1, 5: 5, 0: 0],
        0: [1: 0, 2: 0, 6: 0, 7: 0, 3: 0, 4: 0, 5: 0, 0: 0],
    ]
    static let stateFlags: [UInt32: UInt64] = [1: 1, 2: 1, 6: 1 | 4, 7: 1 | 2 | 4, 3: 1, 4: 1, 5: 1 | 2, 0: ~0]

    /// The steps the kernel takes from `cur` to `new` (the driver's loop over
    /// vfio_mig_get_next_state), nil where it answers EINVAL.
    static func kernelPath(_ cur: MigrationState, _ new: MigrationState, _ flags: UInt64) -> [MigrationState]? {
        func supported(_ s: UInt32) -> Bool { stateFlags[s]! & flags == stateFlags[s]! }
        guard supported(cur.rawValue), supported(new.rawValue) else { return nil }
        var out: [MigrationState] = []
        var c = cur.rawValue
        while c != new.rawValue {
            var next = table[c]![new.rawValue]!
            while next != 0 && !supported(next) { next = table[next]![new.rawValue]! }
            if next == 0 { return nil }
            out.append(MigrationState(rawValue: next)!)
            c = next
        }
        return out
    }

    static let flagSets: [MigrationCapabilities] = [[.stopCopy], [.stopCopy, .p2p], [.stopCopy, .preCopy],
                                                   [.stopCopy, .p2p, .preCopy]]

    @Test(arguments: flagSets)
    func everyPairTakesTheKernelsPath(_ caps: MigrationCapabilities) {
        var pairs = 0
        for from in MigrationState.all {
            for to in MigrationState.all {
                let kernel = Self.kernelPath(from, to, caps.rawValue)
                let ours = MigrationFSM.path(from: from, to: to, capabilities: caps)
                #expect(ours == kernel, "\(caps): \(from) -> \(to): ours \(String(describing: ours)), kernel's \(String(describing: kernel))")
                #expect((ours == nil) == (MigrationFSM.refusal(from: from, to: to, capabilities: caps) != nil))
                pairs += 1
            }
        }
        #expect(pairs == 64)
    }

    /// The combination transitions the uapi comment lists, with every optional state supported.
    @Test func theUapisCombinationTransitions() {
        let all: MigrationCapabilities = [.stopCopy, .p2p, .preCopy]
        #expect(MigrationFSM.path(from: .preCopy, to: .resuming, capabilities: all) == [.running, .runningP2P, .stop, .resuming])
        #expect(MigrationFSM.path(from: .preCopy, to: .stopCopy, capabilities: all) == [.preCopyP2P, .stopCopy])
        #expect(MigrationFSM.path(from: .resuming, to: .preCopy, capabilities: all) == [.stop, .runningP2P, .running, .preCopy])
        #expect(MigrationFSM.path(from: .stopCopy, to: .running, capabilities: all) == [.stop, .runningP2P, .running])
        #expect(MigrationFSM.path(from: .stopCopy, to: .preCopy, capabilities: all) == nil)
        #expect(MigrationFSM.refusal(from: .stopCopy, to: .preCopyP2P, capabilities: all)?.contains("no path from STOP_COPY") == true)
        // Without P2P, RUNNING_P2P is skipped: RUNNING -> STOP is one arc.
        #expect(MigrationFSM.path(from: .running, to: .stop, capabilities: .stopCopy) == [.stop])
        #expect(MigrationFSM.startsDataSession(from: .running, to: .preCopy))
        #expect(!MigrationFSM.startsDataSession(from: .preCopy, to: .stopCopy))
        #expect(MigrationFSM.startsDataSession(from: .running, to: .resuming))
        #expect(MigrationState(name: "stop-copy") == .stopCopy && MigrationState(name: "PRE_COPY_P2P") == .preCopyP2P)
        #expect(MigrationCapabilities(rawValue: 7).description == "STOP_COPY|P2P|PRE_COPY")
    }

    /// A fake device with mtty's flags, in `state`: GET answers it, SET moves there or fails with `setErrno`.
    static func device(in state: MigrationState, setErrno: Int32? = nil, _ body: (VFIODevice, FakeKernel) throws -> Void) throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        let current = Mutex(state.rawValue)
        kernel.onIoctl(VFIO_DEVICE_FEATURE) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_device_feature.self)
            let payload = arg! + MemoryLayout<vfio_device_feature>.size
            switch p.pointee.flags & VFIO_DEVICE_FEATURE_MASK {
            case VFIO_DEVICE_FEATURE_MIGRATION:
                payload.storeBytes(of: VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY, as: UInt64.self)
                return 0
            case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
                if p.pointee.flags & VFIO_DEVICE_FEATURE_GET != 0 {
                    payload.storeBytes(of: current.withLock { $0 }, as: UInt32.self)
                    return 0
                }
                if let e = setErrno { current.withLock { $0 = MigrationState.error.rawValue }; return -e }
                current.withLock { $0 = payload.load(as: UInt32.self) }
                payload.storeBytes(of: Int32(-1), toByteOffset: 4, as: Int32.self)
                return 0
            default: return -ENOTTY
            }
        }
        try Syscalls.withProvider(kernel) {
            let d = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            try body(d, kernel)
            try d.close()
        }
    }

    @Test func aMoveTheUapiForbidsIsRefusedBeforeTheKernelIsAskedNamingBothStates() throws {
        try Self.device(in: .stopCopy) { d, kernel in
            let before = kernel.calls(VFIO_DEVICE_FEATURE).count
            let e = #expect(throws: VFIOError.self) { try d.setMigrationState(.preCopy) }
            #expect(e?.operation == .step(.changeMigrationState))
            #expect(e?.detail?.hasPrefix("cannot move the device from STOP_COPY to PRE_COPY: the uapi has no path") == true,
                    "\(String(describing: e))")
            // Only the GETs of flags and state: no SET.
            #expect(kernel.calls(VFIO_DEVICE_FEATURE).count == before + 2)
        }
    }

    @Test func aFailedMoveNamesWhereTheDeviceWasWhereItWasAskedThePathAndWhereItIsNow() throws {
        try Self.device(in: .running, setErrno: EIO) { d, _ in
            let e = #expect(throws: VFIOError.self) { try d.setMigrationState(.resuming) }
            #expect(e?.operation == .ioctl(.vfioDeviceFeature) && e?.errno == .ioError)
            #expect(e?.detail?.hasPrefix("moving from RUNNING to RESUMING through RUNNING_P2P, STOP failed; the device is now in ERROR")
                    == true, "\(String(describing: e))")
        }
    }

    @Test func aSessionStartThatReturnsNoFdIsAnError() throws {
        try Self.device(in: .running) { d, _ in
            let e = #expect(throws: VFIOError.self) { try d.setMigrationState(.preCopy) }
            #expect(e?.detail?.contains("starts a data session, but the driver returned no data fd") == true,
                    "\(String(describing: e))")
            let back = try d.setMigrationState(.running)
            #expect(back == nil)
        }
    }
}
