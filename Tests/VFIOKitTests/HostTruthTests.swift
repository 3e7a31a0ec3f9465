import CVFIO
import Foundation
import Synchronization
import Testing
import VFIOCommands
import VFIOKitTestSupport
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

/// Driver binding restores: verified, records kept when they do not take, and
/// never a driver the device did not have.
@Suite struct BindingRestoreTests {
    @Test func failedBindWhoseRollbackFailsKeepsTheRecordAndSaysSo() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        f.kernel.failProbe("vfio-pci")
        f.kernel.failProbe("nvme")  // putting it back fails too
        do {
            _ = try f.host.bind(a)
            Issue.record("bind succeeded")
        } catch {
            #expect(!(error.hint ?? "").contains("was put back"), "\(error)")
            #expect(error.description.contains("could not be put back to nvme"), "\(error)")
            #expect(error.remedies.contains(.restoreDriver(a)), "\(error)")
            #expect(CLIWording.message(error).contains("vfioctl unbind \(a) --restore"), "\(error)")
        }
        // The record still names the true original driver.
        #expect(f.host.bindingRecord(a)?.originalDriver == "nvme")
    }

    @Test func groupBindRollbackKeepsTheRecordsOfEarlierBinds() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:01:01.0")
        try f.bindLink("0000:01:01.0", "e1000e")
        f.kernel.setDefaultDriver("0000:01:01.0", "e1000e")
        // An earlier bind, then an unbind without --restore: no driver now, record says e1000e.
        _ = try f.host.bind(a)
        _ = try f.host.unbind(a)
        #expect(f.driver("0000:01:01.0") == nil && f.host.bindingRecord(a)?.originalDriver == "e1000e")
        // A group bind whose second member fails.
        f.kernel.failWrite("/sys/bus/pci/devices/0000:01:02.0/driver_override")
        #expect(throws: VFIOError.self) { _ = try f.host.bind(a, group: true) }
        // Back as it was before the call: no driver, and the record of the true original kept.
        #expect(f.driver("0000:01:01.0") == nil && f.override("0000:01:01.0") == nil)
        #expect(f.host.bindingRecord(a)?.originalDriver == "e1000e")
        _ = try f.host.unbind(a, restore: true)
        #expect(f.driver("0000:01:01.0") == "e1000e")
    }

    @Test func restoreOfADeviceThatHadNoDriverAttachesNone() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:02.0")
        // A driver that would claim the device if anything probed it.
        f.kernel.setDefaultDriver("0000:00:02.0", "e1000e")
        _ = try f.host.bind(a)
        #expect(f.host.bindingRecord(a)?.originalDriver == nil)
        let before = f.kernel.log.count
        let o = try f.host.unbind(a, restore: true)
        #expect(o.driver == nil && f.driver("0000:00:02.0") == nil && f.override("0000:00:02.0") == nil)
        let after = f.kernel.log.dropFirst(before)
        #expect(!after.contains { $0.hasPrefix("/sys/bus/pci/drivers_probe") }, "\(Array(after))")
        #expect(f.host.bindingRecord(a) == nil)
    }

    @Test func restoreThatDoesNotTakeKeepsTheRecord() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        _ = try f.host.bind(a)
        f.kernel.failProbe("nvme")
        let e = try #require(throws: VFIOError.self) { _ = try f.host.unbind(a, restore: true) }
        #expect(f.host.bindingRecord(a)?.originalDriver == "nvme")
        // The cause fixed, the printed fix, followed as printed, gives nvme back.
        f.kernel.clearFailures()
        #expect(printedCommands(CLIWording.text(e.remedies) ?? "") == ["vfioctl unbind 0000:00:05.0 --restore"],
                "\(CLIWording.message(e))")
        followAll(CLIWording.text(e.remedies), in: f)
        #expect(f.driver("0000:00:05.0") == "nvme" && f.host.bindingRecord(a) == nil)
    }

    @Test func restoreNeverProbesAnotherDriver() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        _ = try f.host.bind(a)
        // The kernel would now pick e1000e for it (say, a new_id someone added): restore must still give nvme.
        f.kernel.setDefaultDriver("0000:00:05.0", "e1000e")
        _ = try f.host.unbind(a, restore: true)
        #expect(f.driver("0000:00:05.0") == "nvme")
    }
}

/// The state directory and its records cannot be turned against root.
@Suite struct BindingStateFileTests {
    func stateDir(_ f: PCIFixture) -> String { f.root + "/run/vfiokit/bindings" }

    @Test func recordWritesFollowNoSymlink() throws {
        let f = try guestLikeFixture()
        let victim = f.root + "/victim"
        try "precious\n".write(toFile: victim, atomically: false, encoding: .utf8)
        try f.fm.createDirectory(atPath: stateDir(f), withIntermediateDirectories: true)
        // The old fixed temp name, planted as a symlink to the victim: bind works and never writes through it.
        try f.fm.createSymbolicLink(atPath: stateDir(f) + "/0000:00:05.0.json.tmp", withDestinationPath: victim)
        let a = try PCIAddress(parsing: "0000:00:05.0")
        _ = try f.host.bind(a)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious\n")
        #expect(f.host.bindingRecord(a)?.originalDriver == "nvme")
        _ = try f.host.unbind(a, restore: true)
        // The lock, planted as a symlink: refused, naming it, and nothing is created through it.
        try f.fm.removeItem(atPath: stateDir(f) + "/.lock")
        try f.fm.createSymbolicLink(atPath: stateDir(f) + "/.lock", withDestinationPath: f.root + "/created-through-lock")
        do {
            _ = try f.host.bind(a)
            Issue.record("bind succeeded")
        } catch {
            #expect(error.description.contains(".lock is a symlink"), "\(error)")
        }
        #expect(!f.fm.fileExists(atPath: f.root + "/created-through-lock"))
        #expect(f.driver("0000:00:05.0") == "nvme")
        // A record planted as a symlink is not read.
        try f.fm.removeItem(atPath: stateDir(f) + "/.lock")
        try f.fm.createSymbolicLink(atPath: stateDir(f) + "/0000:00:05.0.json", withDestinationPath: victim)
        #expect(throws: VFIOError.self) { _ = try f.host.loadBindingRecord(a) }
    }

    @Test func aStateDirectoryOwnedByAnotherUserIsRefused() throws {
        let f = try guestLikeFixture()
        try f.fm.createDirectory(atPath: stateDir(f), withIntermediateDirectories: true)
        #expect(chown(stateDir(f), 4321, 4321) == 0)
        let a = try PCIAddress(parsing: "0000:00:05.0")
        do {
            _ = try f.host.bind(a)
            Issue.record("bind succeeded")
        } catch {
            #expect(error.description.contains("owned by uid 4321"), "\(error)")
            #expect(error.description.contains("/run/vfiokit/bindings"), "\(error)")
        }
        #expect(f.kernel.log.isEmpty && f.driver("0000:00:05.0") == "nvme")
    }

    @Test func aWorldWritableStateDirectoryIsRefused() throws {
        let f = try guestLikeFixture()
        try f.fm.createDirectory(atPath: stateDir(f), withIntermediateDirectories: true)
        #expect(chmod(stateDir(f), 0o777) == 0)
        do {
            _ = try f.host.bind(PCIAddress(parsing: "0000:00:05.0"))
            Issue.record("bind succeeded")
        } catch {
            #expect(error.description.contains("writable by"), "\(error)")
        }
        #expect(f.kernel.log.isEmpty)
    }

    @Test func aRecordedDriverNameThatIsNotADriverIsRefused() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        _ = try f.host.bind(a)
        for bad in ["../../../../../tmp/x", "nvme/../e1000e", "..", "nosuchdriver"] {
            let text = "{\"address\": \"0000:00:05.0\", \"original_driver\": \"\(bad)\", "
                + "\"original_driver_override\": null, \"bound_to\": \"vfio-pci\"}\n"
            try text.write(toFile: stateDir(f) + "/0000:00:05.0.json", atomically: false, encoding: .utf8)
            let before = f.kernel.log.count
            do {
                _ = try f.host.unbind(a, restore: true)
                Issue.record("restore to \(bad) succeeded")
            } catch {
                #expect(error.description.contains("original_driver"), "\(error)")
            }
            #expect(!f.kernel.log.dropFirst(before).contains { $0.contains("..") || $0.contains("nosuchdriver") })
            #expect(f.driver("0000:00:05.0") == "vfio-pci")
        }
    }

    @Test func recordsAreJSONWithTheDocumentedKeys() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        _ = try f.host.bind(a)
        let data = try Data(contentsOf: URL(fileURLWithPath: stateDir(f) + "/0000:00:05.0.json"))
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(Set(obj.keys) == ["address", "original_driver", "original_driver_override", "bound_to"])
        #expect(obj["original_driver"] as? String == "nvme" && obj["original_driver_override"] is NSNull)
        // Only the record and the lock are left in the directory: no temp files.
        let names = try f.fm.contentsOfDirectory(atPath: stateDir(f)).sorted()
        #expect(names == [".lock", "0000:00:05.0.json"])
    }
}

/// Group viability fails closed.
@Suite struct ViabilityFailsClosedTests {
    @Test func aMemberWhoseDriverCannotBeReadMakesTheGroupNotViable() throws {
        let f = try guestLikeFixture()
        // 01:02.0's driver entry is not a symlink: readlink fails with EINVAL.
        try f.fm.createDirectory(atPath: f.root + f.dev("0000:01:02.0") + "/driver", withIntermediateDirectories: true)
        let v = try f.host.viability(ofGroup: 4)
        #expect(!v.viable)
        let m = try #require(v.members.first { $0.address.description == "0000:01:02.0" })
        #expect(m.status == .unreadable)
        #expect(m.reason.contains("driver") && m.reason.contains("EINVAL"), "\(m.reason)")
        #expect(v.blocking.map(\.description).contains("0000:01:02.0"))
        #expect(v.summary.contains("0000:01:02.0"))
        // A single bind of its group mate is refused and says why.
        do {
            _ = try f.host.bind(PCIAddress(parsing: "0000:01:01.0"))
            Issue.record("bind succeeded")
        } catch {
            #expect(error.description.contains("0000:01:02.0") && error.description.contains("could not"), "\(error)")
        }
    }

    @Test func aMemberWhoseSysfsEntryCannotBeReadMakesTheGroupNotViable() throws {
        let f = try guestLikeFixture()
        try f.fm.removeItem(atPath: f.root + f.dev("0000:01:02.0") + "/vendor")
        let v = try f.host.viability(ofGroup: 4)
        #expect(!v.viable)
        #expect(v.members.first { $0.address.description == "0000:01:02.0" }?.status == .unreadable)
        #expect(f.host.readiness(of: try f.host.device("0000:01:01.0")) == .groupUnreadable)
    }
}

/// Who owns an IOMMU group, said where VFIOKit knows the BDF.
@Suite struct OwnershipDiagnosisTests {
    /// The pair bound to vfio-pci, interrupt remapping on.
    func pairOnVFIO() throws -> (PCIFixture, PCIAddress, PCIAddress, String, String) {
        let f = try guestLikeFixture()
        try f.write("/proc/interrupts", "  0:  44  IR-IO-APIC  2-edge  timer\n 24:  3  IR-PCI-MSI-0000:00:05.0  0-edge  nvme0q0\n")
        try f.write("/sys/module/iommufd/parameters/allow_unsafe_interrupts", "N\n")
        let a = try PCIAddress(parsing: "0000:01:01.0"), b = try PCIAddress(parsing: "0000:01:02.0")
        _ = try f.host.bind(a, group: true)
        let ca = try #require(try f.host.device(a).vfioCdevPath), cb = try #require(try f.host.device(b).vfioCdevPath)
        return (f, a, b, ca, cb)
    }

    func hold(_ f: PCIFixture, _ node: String, pid: Int = 4242, comm: String = "qemu-system-x86") throws {
        try f.link("/proc/\(pid)/fd/7", to: node)
        try f.write("/proc/\(pid)/comm", comm + "\n")
    }

    @Test func epermFromABindNamesTheProcessHoldingAGroupMateNotMSI() throws {
        let (f, a, b, ca, cb) = try pairOnVFIO()
        try hold(f, cb)
        let e = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .init(rawValue: EPERM), object: ca)
        let x = f.host.explainOwnership(e, device: a).description
        #expect(x.contains("pid 4242 (qemu-system-x86)") && x.contains("IOMMU group 4") && x.contains(b.description), "\(x)")
        #expect(x.contains("cannot be split between owners"), "\(x)")
        #expect(x.contains("interrupt remapping is enabled") && !x.contains("allow_unsafe_interrupts=1"), "\(x)")
    }

    @Test func epermWithoutRemappingAndNoHolderIsMSIIsolation() throws {
        let (f, a, _, ca, _) = try pairOnVFIO()
        try f.write("/proc/interrupts", "  0:  44  IO-APIC  2-edge  timer\n")
        let e = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .init(rawValue: EPERM), object: ca)
        let x = f.host.explainOwnership(e, device: a).description
        #expect(x.contains("no process holds a member of IOMMU group 4"), "\(x)")
        #expect(x.contains("interrupt remapping is disabled") && x.contains("allow_unsafe_interrupts"), "\(x)")
        #expect(x.contains("security decision"), "\(x)")
    }

    @Test func einvalFromABindNamesTheProcessThatHasTheDevice() throws {
        let (f, a, _, ca, _) = try pairOnVFIO()
        try hold(f, ca, pid: 777, comm: "vfioctl")
        let e = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .init(rawValue: EINVAL), object: ca)
        let x = f.host.explainOwnership(e, device: a).description
        #expect(x.contains("pid 777 (vfioctl)") && x.contains(ca) && x.contains("one fd at a time"), "\(x)")
    }

    @Test func ebusyOpeningTheGroupNamesTheCdevHolder() throws {
        let (f, a, b, _, cb) = try pairOnVFIO()
        try hold(f, cb)
        let e = VFIOError(operation: .syscall(.open), errno: .init(rawValue: EBUSY), object: "/dev/vfio/4")
        let x = f.host.explainOwnership(e, device: a).description
        #expect(x.contains("pid 4242 (qemu-system-x86)") && x.contains(b.description) && x.contains("IOMMU group 4"), "\(x)")
        // Without a BDF, by group number.
        let y = f.host.explainOwnership(e, device: nil, group: 4).description
        #expect(y.contains("pid 4242 (qemu-system-x86)"), "\(y)")
    }

    @Test func errorsThatAreNotAboutOwnershipStayAsTheyAre() throws {
        let (f, a, _, ca, cb) = try pairOnVFIO()
        try hold(f, cb)
        for e in [VFIOError(operation: .syscall(.open), errno: .init(rawValue: EBUSY), object: "/dev/vfio/vfio"),
                  VFIOError(operation: .syscall(.open), errno: .init(rawValue: EBUSY), object: ca),
                  VFIOError(operation: .ioctl(.iommuIOASMap), errno: .init(rawValue: EPERM), object: "IOAS 2"),
                  VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .init(rawValue: ENOMEM), object: ca)] {
            #expect(f.host.explainOwnership(e, device: a) == e)
        }
    }

    @Test func theRawHintForEPERMOnBindNamesBothCauses() throws {
        let e = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .init(rawValue: EPERM), object: "/dev/vfio/devices/vfio0")
        let h = try #require(e.hint)
        #expect(h.contains("another member of its IOMMU group") && h.contains("interrupt remapping"), "\(h)")
    }

    @Test func showListsTheHoldersOfTheGroup() throws {
        let (f, a, b, _, cb) = try pairOnVFIO()
        try hold(f, cb)
        #expect(f.host.readiness(of: try f.host.device(a), openNodes: f.host.openDeviceNodes()) == .held)
        let holders = f.host.groupHolders(ofGroup: 4)
        #expect(holders.count == 1 && holders.first?.pid == 4242 && holders.first?.member == b, "\(holders)")
    }
}

/// VFIO_DMA_CC_IOMMU on both paths, against the fake kernel.
@Suite struct CacheCoherencyQueryTests {
    @Test func containerAsksVFIOCheckExtensionAfterTheIOMMUIsSet() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/vfio"] = .node
        Type1Tests.container(kernel)
        kernel.onIoctl(VFIO_CHECK_EXTENSION) { _, a in
            let ext = UInt(bitPattern: a)
            return ext == VFIO_TYPE1v2_IOMMU || ext == VFIO_TYPE1_IOMMU ? 1 : (ext == VFIO_DMA_CC_IOMMU ? 0 : 0)
        }
        try Syscalls.withProvider(kernel) {
            let c = try VFIOContainer(backend: .legacy)
            #expect(throws: VFIOError.self) { _ = try c.cacheCoherency() }  // no IOMMU type yet
            try c.setIOMMU(.type1v2)
            let cc = try c.cacheCoherency()
            #expect(cc.enforced == false && cc.query == "VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) on /dev/vfio/vfio")
            #expect(cc.meaning.contains("wbinvd"))
        }
    }

    @Test func ioasAsksThroughTheCompatIOASAndPutsItBack() throws {
        let k = iommuKernel()
        let compat = Mutex<UInt32?>(nil)
        k.onIoctl(IOMMU_VFIO_IOAS) { _, a in
            let v = a!.assumingMemoryBound(to: iommu_vfio_ioas.self)
            switch UInt32(v.pointee.op) {
            case IOMMU_VFIO_IOAS_GET.rawValue:
                guard let id = compat.withLock({ $0 }) else { return -ENODEV }
                v.pointee.ioas_id = id
            case IOMMU_VFIO_IOAS_SET.rawValue: compat.withLock { $0 = v.pointee.ioas_id }
            default: compat.withLock { $0 = nil }
            }
            return 0
        }
        k.onIoctl(VFIO_CHECK_EXTENSION) { _, a in
            UInt(bitPattern: a) == VFIO_DMA_CC_IOMMU && compat.withLock({ $0 }) != nil ? 1 : 0
        }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let a = try IOAS(ctx), b = try IOAS(ctx)
            let cc = try a.cacheCoherency()
            #expect(cc.enforced == true && cc.query.contains("IOMMU_VFIO_IOAS"), "\(cc)")
            #expect(compat.withLock { $0 } == nil)  // cleared again
            // Another IOAS is the compat IOAS: not moved, refused.
            try ctx.setCompatibilityIOAS(b)
            #expect(throws: VFIOError.self) { _ = try a.cacheCoherency() }
            #expect(compat.withLock { $0 } == b.objectID)
            #expect(try b.cacheCoherency().enforced == true)
            #expect(compat.withLock { $0 } == b.objectID)
        }
    }
}
