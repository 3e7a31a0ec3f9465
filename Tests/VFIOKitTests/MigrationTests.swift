import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

/// The migration state machine: the paths the uapi's comment spells out (include/uapi/linux/vfio.h,
/// "combination transitions"). Every pair of states is checked against the kernel itself, on
/// mtty, by MdevGuestTests.theStateMachineAgreesWithTheKernelOnEveryPair.
@Suite struct MigrationFSMTests {
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
