import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The edu device: IRQs, resets, features, groups. Serialized and exclusive:
/// every test uses the same guest devices and restores their driver binding.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("DeviceGuestTests"))
struct DeviceGuestTests {
    static let pattern = DMAModesTests.pattern

    @Test(.timeLimit(.minutes(1))) func msiThroughAsyncSequence() async throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let space = try DMASpace(mode: .iommufd, dmaMask: EduDevice.dmaMask)
        let edu = try EduDevice(try space.openDevice(try PCIAddress(parsing: bdf)))
        try edu.enableBusMaster()  // an MSI is a memory write by the device
        let msi = try edu.enableMSI()
        var it = msi.eventFD.interrupts().makeAsyncIterator()
        edu.raise(0x1)  // a software-raised edu interrupt goes out as MSI
        let count = await it.next()
        #expect(count != nil && count! >= 1)
        edu.acknowledge(0x1)
        try msi.close()
    }

    /// Real MSIs through an `InterruptExecutor`, in a `withInterrupts(on:)` scope:
    /// each raise arrives as one count on the executor's thread, and cancelling the
    /// task ends a waiting `next()` with nil while no interrupt comes.
    @Test(.timeLimit(.minutes(1))) func msiThroughAnInterruptExecutorScope() async throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let space = try DMASpace(mode: .iommufd, dmaMask: EduDevice.dmaMask)
        let edu = try EduDevice(try space.openDevice(try PCIAddress(parsing: bdf)))
        try edu.enableBusMaster()  // an MSI is a memory write by the device
        let msi = try edu.enableMSI()
        let executor = try InterruptExecutor()
        let eventFD = msi.eventFD
        let waiting = Atomic<Bool>(false), done = Atomic<Bool>(false)
        let task = Task(executorPreference: executor) { () -> ([UInt64?], Int, UInt64?) in
            let r = await eventFD.withInterrupts(on: executor) { interrupts in
                var it = interrupts.makeAsyncIterator()
                var counts: [UInt64?] = []
                var threads: Set<pthread_t> = [pthread_self()]
                for _ in 0..<20 {
                    edu.raise(0x1)
                    counts.append(await it.next())
                    threads.insert(pthread_self())
                    edu.acknowledge(0x1)
                }
                waiting.store(true, ordering: .releasing)
                return (counts, threads.count, await it.next())  // no interrupt comes: only the cancel ends it
            }
            done.store(true, ordering: .releasing)
            return r
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while !waiting.load(ordering: .acquiring) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let arrived = waiting.load(ordering: .acquiring)
        #expect(arrived, "20 MSIs did not arrive in 30 s")
        try await Task.sleep(for: .milliseconds(20))
        let start = ContinuousClock.now
        task.cancel()
        while !done.load(ordering: .acquiring) && ContinuousClock.now - start < .seconds(5) { try await Task.sleep(for: .milliseconds(5)) }
        let ended = done.load(ordering: .acquiring)
        #expect(ended, "cancel did not end the wait")
        if !ended { edu.raise(0x1) }  // release it, so a failure does not hang
        let (counts, threads, afterCancel) = await task.value
        #expect(counts == Array(repeating: 1, count: 20))
        #expect(threads == 1, "the task ran on \(threads) threads")
        #expect(afterCancel == nil)
        try msi.close()
        _ = executor
    }

    @Test func irqInfoResetAndFeaturesOnEdu() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let ctx = try IOMMUFD()
        let device = try VFIODevice.open(try PCIAddress(parsing: bdf))
        try device.bind(to: ctx)

        let info = try device.info()
        #expect(info.isPCI)
        #expect(info.regionCount >= 9 && info.irqCount >= 5)
        let bar0 = try device.regionInfo(PCIRegion.bar(0))
        #expect(bar0.size == 1 << 20 && bar0.isMappable && bar0.isReadable && bar0.isWritable)
        let caps = try device.configSpace().capabilities()
        #expect(caps.contains { $0.known == .msi }, "edu has an MSI capability: \(caps)")
        #expect(try device.configSpace().vendorID == 0x1234)

        #expect(try device.irqInfo(.intx).count == 1)
        #expect(try device.irqInfo(.msi).count == 1)
        #expect(try device.irqInfo(.msix).count == 0)
        #expect(try device.irqInfo(.req).count == 1)

        print("edu \(bdf): VFIO_DEVICE_FLAGS_RESET=\(info.supportsReset), caps \(caps.map { String($0.id, radix: 16) }), "
              + "features \(try device.featureSummary().map { "\($0.name)=\($0.support.isSupported)" })")
        // edu has no reset method (no FLR, no PM reset): VFIOKit says so cleanly.
        #expect(!info.supportsReset)
        let e = #expect(throws: VFIOError.self) { try device.reset() }
        #expect(e?.detail?.contains("not supported by this device") == true, "\(String(describing: e))")
        // On the root bus there is no slot or bus reset.
        let hr = #expect(throws: VFIOError.self) { _ = try device.hotResetInfo() }
        #expect(hr?.detail?.contains("not supported by this device") == true, "\(String(describing: hr))")
        // Features: probing never throws for an emulated device.
        let summary = try device.featureSummary()
        #expect(summary.count == 7)
        #expect(try device.probeFeature(VFIO_DEVICE_FEATURE_MIGRATION).isSupported == false)
        #expect(throws: VFIOError.self) { _ = try device.migrationFlags() }
        try device.close()
    }

    @Test func groupRefusesUntilEveryMemberIsBound() throws {
        let a = try Guest.require("VFIOKIT_EDU_PAIR_A")
        let b = try Guest.require("VFIOKIT_EDU_PAIR_B")
        let bridge = try Guest.requireBridgeAsExpected()
        defer {
            #expect(throws: Never.self, "put the device back") { try Guest.unbind(a) }
            #expect(throws: Never.self, "put the device back") { try Guest.unbind(b) }
        }
        try Guest.bindToVFIO(a)
        let fdsBefore = Guest.openFDCount()
        do {
            let space = try DMASpace(mode: .type1v2, dmaMask: EduDevice.dmaMask)
            let error = #expect(throws: VFIOError.self) { _ = try space.openDevice(try PCIAddress(parsing: a)) }
            let text = error.map { "\($0)" } ?? ""
            #expect(text.contains(b), "the error must name the blocking member \(b): \(text)")
            #expect(!text.contains("\(a) ("), "the bound member is not blocking: \(text)")
        }
        #expect(Guest.openFDCount() == fdsBefore)

        try Guest.bindToVFIO(b)
        do {
            let space = try DMASpace(mode: .type1v2, dmaMask: EduDevice.dmaMask)
            let devA = try space.openDevice(try PCIAddress(parsing: a))
            let devB = try space.openDevice(try PCIAddress(parsing: b))
            #expect(devA.group === devB.group, "both functions share one group")
            let eduA = try EduDevice(devA)
            let eduB = try EduDevice(devB)
            #expect(try eduA.factorial(5) == 120)
            #expect(try eduB.factorial(6) == 720)
            // Both share the container's address space: B reads what A wrote.
            try eduA.enableBusMaster()
            try eduB.enableBusMaster()
            let buffer = try DMABuffer(length: 8192)
            let mapping = try space.map(buffer)
            buffer.write(Self.pattern, at: 0)
            try eduA.dmaToDevice(from: mapping.iova, count: 1000)
            try eduA.dmaFromDevice(to: mapping.iova + 4096, count: 1000)
            let landed = { firstDifference(buffer.read(at: 4096, count: 1000), Array(Self.pattern.prefix(1000))) }
            if try Guest.requireIOMMU() == .amd {
                // QEMU 7.2's AMD-Vi (the AMD guests' QEMU, see vm.sh) does not translate the DMA of
                // devices behind the PCIe-to-PCI bridge: in one boot vfiokit-edu-dma's round trip
                // fails for 01:01.0 and passes for the lone 00:03.0, through iommufd as here through
                // the container. Known, so that a QEMU that fixes it makes this fail.
                withKnownIssue("QEMU 7.2 AMD-Vi: no DMA translation behind a PCIe-to-PCI bridge") {
                    #expect(landed() == nil)
                }
            } else {
                #expect(landed() == nil)
            }

            if bridge != nil {
                // Behind the bridge a bus reset is possible: it reaches both functions.
                let hr = try devA.hotResetInfo()
                let bdfs = Set(hr.devices.map(\.address.description))
                #expect(bdfs.contains(a) && bdfs.contains(b), "hot reset reaches \(bdfs)")
                #expect(!hr.usesDeviceIDs)
                #expect(hr.groupIDs == [UInt32(try VFIOGroup.groupNumber(of: try PCIAddress(parsing: a)))])
                try devA.hotReset(groups: [try #require(devA.group)])
            } else {
                // virtio guest: the pair is one multifunction slot on the root bus; no bus reset there.
                let e = #expect(throws: VFIOError.self) { _ = try devA.hotResetInfo() }
                #expect(e?.detail?.contains("not supported by this device") == true)
            }
            #expect(try eduA.factorial(4) == 24)
        }
        #expect(Guest.openFDCount() == fdsBefore)
    }

    @Test(arguments: [VFIOContainer.Backend.legacy, .iommufdCompat])
    func containerInfoUnmapAllAndUnsetContainer(_ backend: VFIOContainer.Backend) throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let container = try VFIOContainer(backend: backend)
            #expect(try container.supports(.type1v2) && container.supports(.type1))
            let group = try VFIOGroup(of: try PCIAddress(parsing: bdf))
            let status = try group.status()
            #expect(status.viable && !status.containerSet)
            try group.setContainer(container)
            #expect(try group.status().containerSet)
            try container.setIOMMU(.type1v2)
            do {
                let device = try group.device(try PCIAddress(parsing: bdf))
                // Ranges after the device is in: iommufd compat attaches it (and carves out
                // its reserved regions) when the device fd is opened, type1 at VFIO_SET_IOMMU.
                let info = try container.info()
                #expect((info.pageSizes ?? 0) & 0x1000 != 0, "4 KiB pages: \(String(describing: info.pageSizes))")
                let ranges = try #require(info.iovaRanges)
                #expect(!ranges.isEmpty)
                #expect(!ranges.contains { $0.contains(0xfee0_0000) }, "the MSI window is reserved: \(ranges)")
                if backend == .legacy { #expect(info.dmaAvailable != nil) }

                let edu = try EduDevice(device)
                try edu.enableBusMaster()
                let buffer = try DMABuffer(length: 8192)
                let mapping = try container.mapDMA(buffer, at: 0x300000)
                buffer.write(Self.pattern, at: 0)
                try edu.dmaToDevice(from: 0x300000, count: 512)
                try edu.dmaFromDevice(to: 0x301000, count: 512)
                #expect(firstDifference(buffer.read(at: 4096, count: 512), Array(Self.pattern.prefix(512))) == nil)
                #expect(try container.checkExtension(VFIO_UNMAP_ALL))
                #expect(try container.unmapAll() == 8192)
                _ = consume mapping  // unmapAll took it: inert, its deinit issues nothing
                try edu.config.setBusMaster(false)
                if backend == .legacy {
                    // type1: a group leaves its container only when no device of it is open.
                    // (iommufd compat lets it go and keeps the devices bound.)
                    #expect(throws: VFIOError.self) { try group.unsetContainer() }
                }
                try device.close()
            }  // edu's BAR mapping goes here: until then the kernel still counts the device as open
            try group.unsetContainer()
            #expect(try group.status().containerSet == false)
        }
        #expect(Guest.openFDCount() == fdsBefore)
    }

    /// Short unmaps on the container path: type1 answers success with 0
    /// bytes for a range with nothing mapped; VFIOKit reports that as an error.
    /// After unmapAll() a DMAMapping is inert: dropping it does not unmap the
    /// newer mapping at its IOVA (the edu's DMA still lands there).
    @Test(arguments: [VFIOContainer.Backend.legacy, .iommufdCompat])
    func containerUnmapsAreExact(_ backend: VFIOContainer.Backend) throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { try? Guest.unbind(bdf) }
        let fdsBefore = Guest.openFDCount()
        do {
            let container = try VFIOContainer(backend: backend)
            let group = try VFIOGroup(of: try PCIAddress(parsing: bdf))
            try group.setContainer(container)
            try container.setIOMMU(.type1v2)
            try #require(try container.checkExtension(VFIO_UNMAP_ALL), "the container needs VFIO_UNMAP_ALL")
            do {
                let device = try group.device(try PCIAddress(parsing: bdf))
                let edu = try EduDevice(device)
                try edu.enableBusMaster()
                let source = try DMABuffer(length: 4096), old = try DMABuffer(length: 8192), newer = try DMABuffer(length: 8192)
                source.write(Self.pattern, at: 0)
                let sourceMapping = try container.mapDMA(source, at: 0x500000)

                // Unmap twice: the second finds nothing there.
                try container.unsafeMapDMA(address: UnsafeRawPointer(old.baseAddress), length: 8192, at: 0x400000)
                #expect(try container.unmapDMA(iova: 0x400000, length: 8192) == 8192)
                let twice = #expect(throws: VFIOError.self) { _ = try container.unmapDMA(iova: 0x400000, length: 8192) }
                #expect(twice?.errno == nil && twice?.description.contains("short unmap") == true, "\(String(describing: twice))")
                #expect(twice?.description.contains("unmapped 0") == true)

                // unmapAll, a newer mapping at the same IOVA, then the old DMAMapping ends.
                var stale: DMAMapping? = try container.mapDMA(old, at: 0x300000)
                #expect(try container.unmapAll() == 8192 + 4096)
                let availBefore = try container.info().dmaAvailable
                let sourceAgain = try container.mapDMA(source, at: 0x500000)
                let fresh = try container.mapDMA(newer, at: 0x300000)
                stale = nil
                if backend == .legacy {
                    #expect(try container.info().dmaAvailable == availBefore.map { $0 - 2 }, "the newer mapping was unmapped")
                }
                try edu.dmaToDevice(from: 0x500000, count: 512)
                try edu.dmaFromDevice(to: 0x300000, count: 512)
                #expect(firstDifference(newer.read(at: 0, count: 512), Array(Self.pattern.prefix(512))) == nil,
                        "the device's write did not reach the newer mapping")
                try fresh.unmap()
                try sourceAgain.unmap()
                try sourceMapping.unmap()  // inert since unmapAll: nothing to do
                try edu.config.setBusMaster(false)
                try device.close()
                withExtendedLifetime(stale) {}
            }
            try group.unsetContainer()
        }
        #expect(Guest.openFDCount() == fdsBefore)
    }

    @Test func intxIsAutomaskedAndUnmasked() throws {
        try withEduInIOMMUFDSpace { device, edu in
            let info = try device.irqInfo(.intx)
            #expect(info.isAutomasked && info.supportsEventFD)
            let intx = try device.interrupt(.intx)
            for round in 0..<3 {
                edu.raise(0x1)
                #expect(try intx.wait(timeout: .seconds(20)) != nil, "INTx round \(round) not signalled")
                edu.acknowledge(0x1)
                try device.unmaskIRQ(.intx)
            }
            // Masked: a raise is held back until unmasked.
            try device.maskIRQ(.intx)
            edu.raise(0x1)
            #expect(try intx.wait(timeout: .milliseconds(300)) == nil, "masked INTx must not signal")
            try device.unmaskIRQ(.intx)
            #expect(try intx.wait(timeout: .seconds(20)) != nil, "the pending INTx arrives on unmask")
            edu.acknowledge(0x1)
            try device.unmaskIRQ(.intx)
            try intx.close()
        }
    }

    @Test func ioeventfdWritesTheRegisterWithoutUs() throws {
        try withEduInIOMMUFDSpace { device, edu in
            let bar0 = try device.regionInfo(PCIRegion.bar(0))
            let kick = try EventFD()
            try device.setIOEventFD(region: bar0, offset: 0x04, width: 4, data: 0x00c0_ffee, eventfd: kick)
            try kick.signal()
            var seen: UInt32 = 0
            for _ in 0..<2000 {
                seen = edu.bar0.load32(at: 0x04)
                if seen == ~UInt32(0x00c0_ffee) { break }
                usleep(1000)
            }
            #expect(seen == ~UInt32(0x00c0_ffee), "the kernel wrote the liveness register on the eventfd")
            try device.setIOEventFD(region: bar0, offset: 0x04, width: 4, data: 0x00c0_ffee, eventfd: nil)
            #expect(throws: VFIOError.self) {
                try device.setIOEventFD(region: bar0, offset: 0x04, width: 3, data: 0, eventfd: kick)
            }
        }
    }

    @Test func attachReplacesAndDetachBlocksDMA() throws {
        let bdf = try Guest.requireEdu()
        try Guest.withDeviceOnIOMMUFD(bdf) { ctx, device, _ in
            let first = try IOAS(ctx)
            let second = try IOAS(ctx)
            let hwpt1 = try device.attach(to: first)
            let edu = try EduDevice(device)
            try edu.enableBusMaster()
            let b1 = try DMABuffer(length: 8192)
            let b2 = try DMABuffer(length: 8192)
            let m1 = try first.map(b1, at: 0x200000)
            let m2 = try second.map(b2, at: 0x200000)
            b1.fill(0x11)
            b2.write([UInt8](repeating: 0x22, count: 64), at: 0)  // the second page stays zero
            // Replace: the same IOVA now means the second IOAS's memory.
            let hwpt2 = try device.attach(to: second)
            #expect(hwpt1 != hwpt2, "each IOAS gets its own paging HWPT")
            #expect(device.attachedTarget === second)
            try edu.dmaToDevice(from: 0x200000, count: 64)
            try edu.dmaFromDevice(to: 0x201000, count: 64)
            #expect(b2.read(at: 4096, count: 64) == [UInt8](repeating: 0x22, count: 64))
            #expect(b1.read(at: 4096, count: 64) == [UInt8](repeating: 0x11, count: 64))
            // Detached: DMA is blocked.
            try device.detach()
            b2.fill(0x33)
            try edu.dmaFromDevice(to: 0x201000, count: 64)
            #expect(b2.read(at: 4096, count: 64) == [UInt8](repeating: 0x33, count: 64))
            // edu has no PASID capability: the kernel refuses a PASID attach.
            #expect(throws: VFIOError.self) { try device.attach(to: first, pasid: 1) }
            _ = consume m1
            _ = consume m2
        }
    }

    /// Devices of one IOMMU group share one iommufd context: binding the
    /// second member to another context is refused, and the error says why.
    @Test func groupMembersShareOneIOMMUFDContext() throws {
        let a = try Guest.require("VFIOKIT_EDU_PAIR_A")
        let b = try Guest.require("VFIOKIT_EDU_PAIR_B")
        try Guest.withBoundToVFIO(a, b) {
            let ctx = try IOMMUFD()
            let devA = try VFIODevice.open(try PCIAddress(parsing: a))
            try devA.bind(to: ctx)
            let other = try IOMMUFD()
            let devB = try VFIODevice.open(try PCIAddress(parsing: b))
            let e = #expect(throws: VFIOError.self) { try devB.bind(to: other) }
            #expect(e?.errno == .notPermitted)
            #expect(e?.hint?.contains("IOMMU group") == true, "\(String(describing: e))")
            // Where the BDF is known, the host layer says which cause it is: no other
            // process holds the group and interrupts are isolated, so another context of ours does.
            let why = PCIHost.system.explainOwnership(try #require(e), device: try PCIAddress(parsing: b))
            #expect(why.detail?.contains("another iommufd context of this process holds a member of the group") == true, "\(why)")
            try devB.close()
            // In the same context it binds.
            let again = try VFIODevice.open(try PCIAddress(parsing: b))
            #expect(try again.bind(to: ctx) != 0)
            try again.close()
            try devA.close()
        }
    }

    /// Needs the pair behind a bridge (a bus reset): not under virtio-iommu,
    /// where the manifest leaves it out (Tests/GuestManifest/virtio.txt).
    @Test func cdevHotResetInfoReportsOwnership() throws {
        let a = try Guest.require("VFIOKIT_EDU_PAIR_A")
        let b = try Guest.require("VFIOKIT_EDU_PAIR_B")
        try #require(try Guest.requireBridgeAsExpected() != nil, "the pair is not behind a bridge under \(Guest.iommu ?? "?")")
        try Guest.withBoundToVFIO(a, b) {
            let ctx = try IOMMUFD()
            let devA = try VFIODevice.open(try PCIAddress(parsing: a))
            let idA = try devA.bind(to: ctx)
            // B is bound to vfio-pci but opened by nobody: the kernel counts it as
            // ours (resetting it disturbs no user), without a device id.
            var hr = try devA.hotResetInfo()
            #expect(hr.usesDeviceIDs)
            #expect(hr.devices.first { $0.address.description == a }?.deviceID == idA)
            #expect(hr.devices.first { $0.address.description == b }?.owned == true)
            #expect(hr.devices.first { $0.address.description == b }?.deviceID == nil)
            #expect(hr.allOwned)
            // B bound in our context: both ours, with ids; the reset goes through.
            let devB = try VFIODevice.open(try PCIAddress(parsing: b))
            let idB = try devB.bind(to: ctx)
            hr = try devA.hotResetInfo()
            #expect(hr.devices.first { $0.address.description == b }?.deviceID == idB)
            #expect(hr.allOwned)
            try devA.hotReset()
        }
    }
}

/// The edu device through each of the five DMA modes (run on every IOMMU by CI).
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("DMAModesTests"))
struct DMAModesTests {
    static let pattern: [UInt8] = (0..<4000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }

    @Test(arguments: DMAMode.allCases)
    func eduDMAInEveryMode(_ mode: DMAMode) throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        #expect(DMAMode.available().contains(mode), "\(mode) should be available in the guest")
        let fdsBefore = Guest.openFDCount()
        do {
            let space = try DMASpace(mode: mode, dmaMask: EduDevice.dmaMask)
            let device = try space.openDevice(try PCIAddress(parsing: bdf))
            let edu = try EduDevice(device)

            // MMIO: identification, liveness, factorial.
            #expect(edu.id == EduDevice.identification)
            #expect(edu.liveness(0x1234_5678) == ~UInt32(0x1234_5678))
            #expect(try edu.factorial(10) == 3_628_800)

            try edu.enableBusMaster()
            #expect(try edu.config.command().contains(.busMaster))
            let msi = try edu.enableMSI()

            let buffer = try DMABuffer(length: 8192)
            let first = try space.map(buffer)
            let iova = first.iova
            var mapping: DMAMapping? = consume first
            #expect(iova + 8192 - 1 <= EduDevice.dmaMask, "allocator must honour the 28-bit DMA mask")
            buffer.write(Self.pattern, at: 0)

            // RAM -> device, MSI on completion.
            try edu.dmaToDevice(from: iova, count: Self.pattern.count, interrupt: true, wait: false)
            let signalled = try msi.wait(timeout: .seconds(20))
            #expect(signalled != nil, "MSI for DMA completion (RAM -> device) not seen")
            #expect(edu.interruptStatus & 0x100 != 0)
            edu.acknowledge(0x100)
            try edu.waitForDMA()

            // device -> RAM, MSI again.
            try edu.dmaFromDevice(to: iova + 4096, count: Self.pattern.count, interrupt: true, wait: false)
            #expect(try msi.wait(timeout: .seconds(20)) != nil, "MSI for DMA completion (device -> RAM) not seen")
            edu.acknowledge(0x100)
            try edu.waitForDMA()
            #expect(firstDifference(buffer.read(at: 4096, count: Self.pattern.count), Self.pattern) == nil)

            // After unmap, the device cannot reach the memory.
            try mapping.take()!.unmap()
            buffer.fill(0x5A)
            try edu.dmaFromDevice(to: iova + 4096, count: Self.pattern.count)
            #expect(firstDifference(buffer.read(at: 4096, count: Self.pattern.count), [UInt8](repeating: 0x5A, count: Self.pattern.count)) == nil)

            try msi.close()
            try edu.config.setBusMaster(false)
        }
        #expect(Guest.openFDCount() == fdsBefore, "teardown must close every fd")
    }

    @Test(arguments: [DMABuffer.Backing.hugePages, .memfd])
    func eduDMAWithOtherBuffers(_ backing: DMABuffer.Backing) throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        for mode in [DMAMode.iommufd, .type1v2] {
            let space = try DMASpace(mode: mode, dmaMask: EduDevice.dmaMask)
            let edu = try EduDevice(try space.openDevice(try PCIAddress(parsing: bdf)))
            try edu.enableBusMaster()
            let (ranges, alignment) = try space.usableRanges()
            #expect(!ranges.isEmpty && alignment >= 4096)
            let buffer = try DMABuffer(length: 8192, backing: backing)
            #expect(buffer.length == (backing == .hugePages ? DMABuffer.hugePageSize : 8192))
            let mapping = try space.map(buffer)
            #expect(ranges.contains { $0.contains(mapping.iova) }, "IOVA \(mapping.iova) in \(ranges)")
            buffer.write(Self.pattern, at: 0)
            try edu.dmaToDevice(from: mapping.iova, count: Self.pattern.count)
            try edu.dmaFromDevice(to: mapping.iova + 4096, count: Self.pattern.count)
            #expect(firstDifference(buffer.read(at: 4096, count: Self.pattern.count), Self.pattern) == nil, "\(mode) \(backing)")
        }
    }

    @Test func reopenAfterClose() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        for mode in [DMAMode.iommufd, .type1v2] {
            for _ in 0..<2 {
                let space = try DMASpace(mode: mode, dmaMask: EduDevice.dmaMask)
                let device = try space.openDevice(try PCIAddress(parsing: bdf))
                #expect(try EduDevice(device).id == EduDevice.identification)
                try device.close()
                try device.close()  // idempotent
            }
        }
    }
}

extension DeviceGuestTests {
    /// Runs `body` with the lone edu bound to vfio-pci and opened through an
    /// iommufd DMA space (the device and its edu registers), and puts it back after.
    func withEduInIOMMUFDSpace(_ body: (_ device: VFIODevice, _ edu: EduDevice) throws -> Void) throws {
        let bdf = try Guest.requireEdu()
        try Guest.withBoundToVFIO(bdf) {
            let space = try DMASpace(mode: .iommufd, dmaMask: EduDevice.dmaMask)
            let device = try space.openDevice(try PCIAddress(parsing: bdf))
            try body(device, try EduDevice(device))
        }
    }
}
