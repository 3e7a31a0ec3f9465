import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Object ids, destroy, close and mappings against a model of iommufd that
/// reuses ids the way the kernel does (lowest free id first).
@Suite struct ObjectLifetimeTests {
    typealias Area = IOMMUModel.Area

    // MARK: stale ids

    @Test func destroyingAnIOASWithLiveMappingsIsRefusedSoItsIdCannotReachAnotherIOAS() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ctx = try IOMMUFD()
            let a = try IOAS(ctx)
            let bufA = try DMABuffer(length: 4096), bufB = try DMABuffer(length: 4096)
            var mapping: DMAMapping? = try a.map(bufA, at: 0x10_0000)
            let refused = #expect(throws: VFIOError.self) { try a.destroy() }
            #expect(refused?.operation == .ioctl(.iommuDestroy))
            #expect(refused?.description.contains("1 live DMAMapping") == true, "\(String(describing: refused))")
            #expect(refused?.hint?.contains("unmapAll") == true)
            // Whatever destroy did, a second IOAS maps the same IOVA (the kernel reuses a freed id at once).
            let b = try IOAS(ctx)
            let mb = try b.map(bufB, at: 0x10_0000)
            mapping = nil  // a's mapping ends: it may only ever unmap in a
            #expect(model.areas(b.objectID) == [Area(iova: 0x10_0000, length: 4096)], "another IOAS lost its mapping")
            try mb.unmap()
            try a.destroy()
            withExtendedLifetime(mapping) {}
        }
    }

    /// Every owner, destroyed: each operation throws a "destroyed" error and
    /// issues no ioctl (the id may name a new object by now).
    @Test func everyOperationOfADestroyedOwnerThrowsWithoutAnIoctl() throws {
        let model = IOMMUModel()
        let k = model.kernel
        k.files["/dev/vfio/devices/vfio0"] = .node
        k.onIoctl(VFIO_DEVICE_BIND_IOMMUFD) { _, a in arg(a, vfio_device_bind_iommufd.self).pointee.out_devid = 42; return 0 }
        k.onIoctl(VFIO_DEVICE_ATTACH_IOMMUFD_PT) { _, _ in 0 }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx), other = try IOAS(ctx)
            let parent = try HWPT(ioas: ioas, device: 42, flags: .nestParent)
            let queue = try FaultQueue(ctx)
            let hwpt = try HWPT(ioas: ioas, device: 42, faultQueue: queue)
            let viommu = try VIOMMU(device: 42, parent: parent, type: 0xff)
            let vdev = try VDevice(viommu: viommu, device: 42, virtualID: 9)
            let veventq = try VEventQueue(viommu: viommu, type: 0xff, depth: 4, eventSize: 4)
            let hwq = try HWQueue(viommu: viommu, type: 0xff, index: 0, iova: 0x1000, length: 0x1000)
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            try device.bind(to: ctx)
            for o: any Destroyable in [hwq, veventq, vdev, viommu, hwpt, queue, parent, ioas] { try o.destroy() }
            #expect(model.ids == [other.objectID], "\(model.ids)")
            // The ids are free: new objects take them.
            let reused = try IOAS(ctx)
            #expect(reused.objectID == ioas.objectID)

            let buf = try DMABuffer(length: 4096), file = try DMABuffer(length: 4096, backing: .memfd)
            let page = UnsafeRawPointer(bitPattern: buf.address)!
            var bitmap = try DirtyBitmap(iova: 0, length: 4096, pageSize: 4096)
            let entry = [UInt8](repeating: 0, count: 16)
            let operations: [(String, String, () throws -> Void)] = [
                ("IOAS", "map", { _ = try ioas.map(buf, at: 0x1000) }),
                ("IOAS", "unsafeMap", { _ = try ioas.unsafeMap(address: page, length: 4096, at: nil) }),
                ("IOAS", "mapFile", { _ = try ioas.mapFile(file, at: nil) }),
                ("IOAS", "unmap", { _ = try ioas.unmap(iova: 0x1000, length: 4096) }),
                ("IOAS", "unmapAll", { _ = try ioas.unmapAll() }),
                ("IOAS", "copy into", { _ = try ioas.copy(from: other, sourceIOVA: 0, length: 4096, to: nil) }),
                ("IOAS", "copy from", { _ = try other.copy(from: ioas, sourceIOVA: 0, length: 4096, to: nil) }),
                ("IOAS", "iovaRanges", { _ = try ioas.iovaRanges() }),
                ("IOAS", "allowIOVAs", { try ioas.allowIOVAs([0...0xffff]) }),
                ("IOAS", "hugePages", { _ = try ioas.hugePages() }),
                ("IOAS", "setHugePages", { try ioas.setHugePages(false) }),
                ("IOAS", "setCompatibilityIOAS", { try ctx.setCompatibilityIOAS(ioas) }),
                ("IOAS", "HWPT on it", { _ = try HWPT(ioas: ioas, device: 42) }),
                ("IOAS", "attach a device", { try device.attach(to: ioas) }),
                ("HWPT", "setDirtyTracking", { try parent.setDirtyTracking(true) }),
                ("HWPT", "readDirty", { try parent.readDirty(into: &bitmap) }),
                ("HWPT", "invalidate", { _ = try parent.invalidate([.all]) }),
                ("HWPT", "raw invalidate", {
                    _ = try entry.withUnsafeBytes { try parent.invalidate(dataType: 0, entryLength: 16, count: 1, entries: $0) }
                }),
                ("HWPT", "nested HWPT on it", { _ = try HWPT(nestedOn: parent, device: 42, data: .raw(type: 0xff, bytes: [])) }),
                ("HWPT", "vIOMMU on it", { _ = try VIOMMU(device: 42, parent: parent, type: 0xff) }),
                ("HWPT", "attach a device", { try device.attach(to: hwpt) }),
                ("fault queue", "read", { _ = try queue.read() }),
                ("fault queue", "wait", { _ = try queue.wait(timeoutMilliseconds: 0) }),
                ("fault queue", "respond", { try queue.respond(cookie: 1, success: true) }),
                ("fault queue", "HWPT with it", { _ = try HWPT(ioas: other, device: 42, faultQueue: queue) }),
                ("vIOMMU", "invalidate", { _ = try viommu.invalidate(armSMMUv3Commands: [(1, 2)]) }),
                ("vIOMMU", "nested HWPT on it", { _ = try HWPT(nestedOn: viommu, device: 42, data: .raw(type: 0xff, bytes: [])) }),
                ("vIOMMU", "vDEVICE", { _ = try VDevice(viommu: viommu, device: 42, virtualID: 1) }),
                ("vIOMMU", "vEVENTQ", { _ = try VEventQueue(viommu: viommu, type: 0xff, depth: 1, eventSize: 4) }),
                ("vIOMMU", "HW queue", { _ = try HWQueue(viommu: viommu, type: 0xff, index: 1, iova: 0, length: 4096) }),
                ("vEVENTQ", "read", { _ = try veventq.read() }),
                ("vEVENTQ", "wait", { _ = try veventq.wait(timeoutMilliseconds: 0) }),
            ]
            for (owner, name, op) in operations {
                let before = k.calls.count
                do {
                    try op()
                    Issue.record("\(owner) \(name) after destroy() succeeded")
                } catch let e as VFIOError {
                    #expect(e.description.contains("destroyed"), "\(owner) \(name): \(e)")
                    #expect(e.hint != nil, "\(owner) \(name): \(e)")
                }
                #expect(k.calls.count == before, "\(owner) \(name) issued \(k.calls[before...].map { "0x" + String($0.request, radix: 16) })")
            }
            // destroy() again: nothing (idempotent), and no ioctl.
            let before = k.calls.count
            for o: any Destroyable in [hwq, veventq, vdev, viommu, hwpt, queue, parent, ioas] { try o.destroy() }
            #expect(k.calls.count == before)
            #expect(model.ids == [other.objectID, reused.objectID].sorted())
            try device.close()
        }
    }

    @Test func unmapAllMakesLiveMappingsInertSoTheyNeverUnmapANewerMapping() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let buf = try DMABuffer(length: 8192)
            var old: DMAMapping? = try ioas.map(buf, at: 0x10_0000)
            let older = try ioas.map(buf, at: 0x20_0000)
            #expect(try ioas.unmapAll() == 16384)
            // Destroy would no longer be refused for them: they map nothing.
            let newer = try ioas.map(buf, at: 0x10_0000)
            let unmaps = model.kernel.calls(IOMMU_IOAS_UNMAP).count
            old = nil  // must not unmap `newer`
            try older.unmap()  // nothing to do, no error
            #expect(model.kernel.calls(IOMMU_IOAS_UNMAP).count == unmaps, "an inert mapping issued an unmap")
            #expect(model.areas(ioas.objectID) == [Area(iova: 0x10_0000, length: 8192)])
            try newer.unmap()
            try ioas.destroy()
            withExtendedLifetime(old) {}
        }
    }

    @Test func aFailedUnmapAllTellsWhichMappingsAreGone() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let buf = try DMABuffer(length: 4096)
            var first: DMAMapping? = try ioas.map(buf, at: 0x10_0000)
            let pinned = try ioas.map(buf, at: 0x20_0000)
            let last = try ioas.map(buf, at: 0x30_0000)
            model.pin(ioas: ioas.objectID, iova: 0x20_0000)
            // The kernel unmaps 0x100000, stops at the pinned area with EBUSY and does not say how far it got.
            let e = #expect(throws: VFIOError.self) { _ = try ioas.unmapAll() }
            #expect(e?.errno == .resourceBusy)
            #expect(e?.detail?.contains("2 of 3") == true, "\(String(describing: e))")
            #expect(model.areas(ioas.objectID) == [Area(iova: 0x20_0000, length: 4096)])
            // The first is gone: a new mapping there is safe from it.
            let newer = try ioas.map(buf, at: 0x10_0000)
            first = nil
            try last.unmap()  // unmapped already: nothing to do
            #expect(model.areas(ioas.objectID) == [Area(iova: 0x10_0000, length: 4096), Area(iova: 0x20_0000, length: 4096)])
            // The pinned one is still its mapping's to unmap.
            model.unpinAll()
            try pinned.unmap()
            try newer.unmap()
            #expect(model.areas(ioas.objectID) == [])
            withExtendedLifetime(first) {}
        }
    }

    @Test func aRawUnmapOfARangeADMAMappingOwnsIsRefused() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let buf = try DMABuffer(length: 8192)
            let m = try ioas.map(buf, at: 0x10_0000)
            let before = model.kernel.calls.count
            let e = #expect(throws: VFIOError.self) { _ = try ioas.unmap(iova: 0x10_1000, length: 0x10_0000) }
            #expect(e?.description.contains("DMAMapping") == true, "\(String(describing: e))")
            #expect(model.kernel.calls.count == before)
            try m.unmap()
        }
    }

    /// Many tasks map and unmap disjoint ranges of one IOAS while others call
    /// unmapAll() and destroy(); once destroy() succeeds, a new IOAS takes the
    /// id and maps the same IOVAs: none of the old owners may touch it.
    @Test func concurrentMapsUnmapAllAndDestroyNeverTouchAnotherObject() async throws {
        let model = IOMMUModel()
        try await Syscalls.withProvider(model.kernel) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let workers = 4, rounds = 300
            let buffers = try (0..<workers).map { _ in try DMABuffer(length: 4096) }
            final class Shared: Sendable {
                let failures = Mutex<[String]>([])
                let destroyed = Atomic<Bool>(false)
                let rounds = Atomic<Int>(0)
            }
            let shared = Shared()
            @Sendable func iova(_ w: Int) -> UInt64 { 0x100_0000 + UInt64(w) * 0x10_0000 }
            await withTaskGroup(of: Void.self) { group in
                for w in 0..<workers {
                    group.addTask {
                        for r in 0..<rounds {
                            let m: DMAMapping
                            do throws(VFIOError) {
                                m = try ioas.map(buffers[w], at: iova(w))
                            } catch {
                                if error.description.contains("destroyed") { return }
                                shared.failures.withLock { $0.append("worker \(w) map, round \(r): \(error)") }
                                return
                            }
                            await Task.yield()  // hold it a moment: unmapAll() may take it meanwhile
                            do throws(VFIOError) {
                                if r % 2 == 0 { try m.unmap() } else { _ = consume m }
                            } catch {
                                shared.failures.withLock { $0.append("worker \(w) unmap, round \(r): \(error)") }
                                return
                            }
                            shared.rounds.add(1, ordering: .relaxed)
                        }
                    }
                }
                group.addTask {
                    while shared.rounds.load(ordering: .relaxed) < workers * rounds {
                        do throws(VFIOError) { _ = try ioas.unmapAll() } catch {
                            if !error.description.contains("destroyed") { shared.failures.withLock { $0.append("unmapAll: \(error)") } }
                            return
                        }
                        await Task.yield()
                    }
                }
                group.addTask {
                    // Destroy once the workers are well under way (it is refused while a mapping lives).
                    while shared.rounds.load(ordering: .relaxed) < workers * rounds / 2 { await Task.yield() }
                    while true {
                        do throws(VFIOError) {
                            try ioas.destroy()
                            shared.destroyed.store(true, ordering: .sequentiallyConsistent)
                            return
                        } catch {
                            if error.errno != nil { shared.failures.withLock { $0.append("destroy: \(error)") }; return }
                            await Task.yield()
                        }
                    }
                }
            }
            #expect(shared.failures.withLock { $0 } == [])
            let didDestroy = shared.destroyed.load(ordering: .sequentiallyConsistent)
            #expect(didDestroy)
            // Some mappings really were taken by unmapAll() under their owners (they then issued no unmap).
            let maps = model.kernel.calls(IOMMU_IOAS_MAP).count
            let unmaps = model.kernel.calls(IOMMU_IOAS_UNMAP).filter { $0.argument(as: iommu_ioas_unmap.self).length != UInt64.max }.count
            #expect(maps - unmaps > 0, "no mapping was made inert: the race was not exercised")
            print("concurrent: \(maps) maps, \(maps - unmaps) made inert by unmapAll")
            // The id is reused; the old owner and its mappings are done with it.
            let next = try IOAS(ctx)
            #expect(next.objectID == ioas.objectID)
            for w in 0..<workers {
                _ = try next.unsafeMap(address: UnsafeRawPointer(bitPattern: buffers[w].address)!, length: 4096, at: iova(w))
            }
            #expect(throws: VFIOError.self) { _ = try ioas.unmapAll() }
            #expect(model.areas(next.objectID)?.count == workers)
            #expect(try next.unmapAll() == UInt64(workers) * 4096)
        }
    }

    @Test func destroyingAnOwnedIdByNumberGoesThroughItsOwner() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let m = try ioas.map(try DMABuffer(length: 4096), at: 0x10_0000)
            let alias = try IOAS(existing: ioas.objectID, in: ctx)
            try ctx.destroy(objectID: ioas.objectID)
            #expect(ioas.isDestroyed && alias.isDestroyed)
            let next = try IOAS(ctx)  // takes the id
            #expect(next.objectID == ioas.objectID)
            let unmaps = model.kernel.calls(IOMMU_IOAS_UNMAP).count
            try m.unmap()  // inert: the IOAS took it with it
            #expect(model.kernel.calls(IOMMU_IOAS_UNMAP).count == unmaps)
            #expect(throws: VFIOError.self) { _ = try alias.iovaRanges() }
            withExtendedLifetime(next) {}
        }
    }

    // MARK: shared contexts

    /// A context another process shares: closing our fd destroys nothing in
    /// the kernel, so close() destroys what this process allocated first,
    /// newest first (children before what they are built on).
    @Test func closingASharedContextDestroysWhatThisProcessAllocated() throws {
        let model = IOMMUModel()
        let k = model.kernel
        let theirs = k.open("/dev/iommu", O_RDWR, 0)
        try Syscalls.withProvider(k) {
            var theirID = iommu_ioas_alloc.make()
            #expect(k.ioctl(theirs, IOMMU_IOAS_ALLOC, &theirID) == 0)  // the other process's IOAS
            let ours = k.open("/dev/iommu", O_RDWR, 0)
            let ctx = IOMMUFD(adopting: ours, label: "adopted iommufd")
            let ioas = try IOAS(ctx)
            let queue = try FaultQueue(ctx)
            let parent = try HWPT(ioas: ioas, device: 42, flags: .nestParent, faultQueue: queue)
            let viommu = try VIOMMU(device: 42, parent: parent, type: 0xff)
            let vdev = try VDevice(viommu: viommu, device: 42, virtualID: 1)
            let existing = try IOAS(existing: theirID.out_ioas_id, in: ctx)
            #expect(model.ids.count == 6)
            try ctx.close()
            #expect(model.ids == [theirID.out_ioas_id], "objects left in the shared context: \(model.ids)")
            let e = #expect(throws: VFIOError.self) { _ = try ioas.iovaRanges() }
            #expect(e?.description.contains("destroyed") == true)
            withExtendedLifetime((vdev, existing)) {}
        }
        _ = k.close(theirs)
    }

    @Test func closeKeepsTheFdWhenAnObjectCannotBeDestroyed() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            // Something VFIOKit did not allocate is built on the IOAS (another process's HWPT, say).
            var raw = iommu_hwpt_alloc.make()
            raw.pt_id = ioas.objectID
            try ctx.unsafeIoctl(IOMMU_HWPT_ALLOC, as: .ioctl(.iommuHWPTAlloc), &raw)
            let e = #expect(throws: VFIOError.self) { try ctx.close() }
            #expect(e?.description.contains(ioas.label) == true, "\(String(describing: e))")
            #expect(e?.description.contains("EBUSY") == true, "\(String(describing: e))")
            #expect(!ctx.fd.isClosed)
            try ctx.destroy(objectID: raw.out_hwpt_id)
            try ctx.close()
            #expect(ctx.fd.isClosed && model.ids == [])
        }
    }
}

/// The owners' common verb, for tables of owners in tests.
protocol Destroyable { func destroy() throws(VFIOError) }
extension IOAS: Destroyable {}
extension HWPT: Destroyable {}
extension FaultQueue: Destroyable {}
extension VIOMMU: Destroyable {}
extension VDevice: Destroyable {}
extension VEventQueue: Destroyable {}
extension HWQueue: Destroyable {}
