import CVFIO
import Dispatch
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A closed owner never lets its number reach a syscall, and closing while a
/// call is in flight defers close(2) until the call returns.
@Suite struct ClosedFDTests {
    private func expectClosedError(_ body: () throws(VFIOError) -> Void, _ what: String,
                                   sourceLocation: SourceLocation = #_sourceLocation) {
        let error = #expect(throws: VFIOError.self, "\(what) on a closed eventfd", sourceLocation: sourceLocation) {
            try body()
        }
        #expect(error?.description.contains("closed") == true, "\(what): \(String(describing: error))",
                sourceLocation: sourceLocation)
    }

    @Test func closedEventFDNeverReachesTheKernel() throws {
        let kernel = FakeKernel()
        try Syscalls.withProvider(kernel) {
            let e = try EventFD()
            try e.close()
            expectClosedError({ () throws(VFIOError) in _ = try e.consume() }, "consume")
            expectClosedError({ () throws(VFIOError) in try e.signal() }, "signal")
            expectClosedError({ () throws(VFIOError) in _ = try e.wait(timeout: .zero) }, "wait")
        }
        #expect(kernel.staleFDUses == [])
        #expect(kernel.openFDCount == 0)
    }

    /// SET_IRQS and IOEVENTFD carry eventfd numbers inside their argument: a
    /// closed eventfd must not be routed to an interrupt (its number may
    /// already belong to another file).
    @Test func closedEventFDIsNeverHandedToTheKernelInAnArgument() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        kernel.onIoctl(VFIO_DEVICE_SET_IRQS) { _, _ in 0 }
        kernel.onIoctl(VFIO_DEVICE_IOEVENTFD) { _, _ in 0 }
        RegionInfoTests.install(kernel)
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let region = try device.regionInfo(0)
            let live = try EventFD()
            let e = try EventFD()
            try e.close()
            expectClosedError({ () throws(VFIOError) in try device.setIRQTrigger(.msix, eventfds: [live, e]) },
                              "setIRQTrigger")
            expectClosedError({ () throws(VFIOError) in try device.setIRQUnmaskEventFD(.intx, eventfd: e) },
                              "setIRQUnmaskEventFD")
            expectClosedError({ () throws(VFIOError) in
                try device.setIOEventFD(region: region, offset: 0, width: 4, data: 1, eventfd: e)
            }, "setIOEventFD")
            #expect(kernel.calls(VFIO_DEVICE_SET_IRQS).isEmpty)
            #expect(kernel.calls(VFIO_DEVICE_IOEVENTFD).isEmpty)
            try live.close()
            try device.close()
        }
        #expect(kernel.openFDCount == 0)
    }

    /// The fake kernel blocks inside an ioctl while another thread closes the
    /// context: close returns at once, and close(2) happens only after the
    /// ioctl has returned.
    @Test func closeDuringAnIoctlClosesOnlyAfterTheCallReturns() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        let entered = DispatchSemaphore(value: 0)
        let closeReturned = DispatchSemaphore(value: 0)
        let callDone = DispatchSemaphore(value: 0)
        let seen = Mutex<(fd: Int32, openAfterClose: Bool)?>(nil)
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { [unowned kernel] fd, arg in
            entered.signal()
            closeReturned.wait()
            seen.withLock { $0 = (fd, kernel.isOpen(fd)) }
            arg!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 3
            return 0
        }
        let ctx = try Syscalls.withProvider(kernel) { try IOMMUFD() }
        let ioasID = Mutex<UInt32?>(nil)
        DispatchQueue.global().async {
            Syscalls.withProvider(kernel) {
                let ioas = try? IOAS(ctx)
                ioasID.withLock { $0 = ioas?.objectID }
            }
            callDone.signal()
        }
        entered.wait()
        try Syscalls.withProvider(kernel) { try ctx.close() }
        closeReturned.signal()
        callDone.wait()
        let s = try #require(seen.withLock { $0 })
        #expect(s.openAfterClose, "close(2) ran while IOMMU_IOAS_ALLOC was still in the kernel")
        #expect(ioasID.withLock { $0 } == 3)
        #expect(!kernel.isOpen(s.fd), "the deferred close did not happen when the call returned")
        #expect(kernel.openFDCount == 0)
        #expect(kernel.staleFDUses == [])
        // Closed: the next call is refused before it reaches the kernel.
        let error = #expect(throws: VFIOError.self) { _ = try IOAS(ctx) }
        #expect(error?.description.contains("closed") == true)
        #expect(kernel.calls(IOMMU_IOAS_ALLOC).count == 1)
    }

    /// A cancelled task's `next()` on `interrupts()` returns nil (the sequence
    /// ends, as an `AsyncStream`'s does), and the stopped iterator's thread
    /// leaves: the eventfd it held a use of is then really closed.
    @Test func interruptsEndOnCancelAndTheThreadLeaves() async throws {
        let kernel = FakeKernel()
        let e = try Syscalls.withProvider(kernel) { try EventFD() }
        let first = Task { () -> (UInt64?, UInt64?) in
            var it = e.interrupts().makeAsyncIterator()
            try? e.signal(3)
            let got = await it.next()
            withUnsafeCurrentTask { $0?.cancel() }
            return (got, await it.next())
        }
        let (got, afterCancel) = await first.value
        #expect(got == 3)
        #expect(afterCancel == nil)
        try e.close()
        // The thread leaves after the cancel (it is woken); the close(2) happens as it does.
        let deadline = ContinuousClock.now + .seconds(30)
        while kernel.openFDCount > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(kernel.openFDCount == 0)
        #expect(kernel.staleFDUses == [])
    }

    /// `interrupts()` runs a thread that polls the eventfd: closing the
    /// eventfd ends the sequence promptly, the thread never touches the closed
    /// number, and the fd is really closed once the thread has left.
    @Test func interruptsEndWhenTheEventFDCloses() async throws {
        let kernel = FakeKernel()
        let e = try Syscalls.withProvider(kernel) { try EventFD() }
        let seen = Mutex<(counts: [UInt64], ended: Bool)>(([], false))
        Task {
            for await n in e.interrupts() { seen.withLock { $0.counts.append(n) } }
            seen.withLock { $0.ended = true }
        }
        try e.signal(2)
        // Wait for the thread to deliver the count, so it is back inside poll when we close. Not a
        // promptness bound: the consuming task needs a cooperative-pool thread, which other tests'
        // synchronous work can hold for seconds on a loaded 2-core machine (a lost count still fails).
        let deadline = ContinuousClock.now + .seconds(60)
        while seen.withLock({ $0.counts }).isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(seen.withLock { $0.counts } == [2])
        let start = ContinuousClock.now
        try e.close()
        while !seen.withLock({ $0.ended }) && ContinuousClock.now - start < .seconds(3) {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(seen.withLock { $0.ended }, "the interrupts sequence did not end after close")
        #expect(seen.withLock { $0.counts } == [2])
        // `ended` within the 3 s above is the promptness check: a thread that the close did not
        // wake would sit in poll forever (a wall-clock bound tighter than that fails on loaded CI).
        #expect(kernel.staleFDUses == [])
        #expect(kernel.openFDCount == 0)
    }
}

/// An owner uses the kernel it was made with for its whole life: made under a
/// fake, it is served and closed by that fake wherever it is used or released.
@Suite struct ProviderCaptureTests {
    @Test func ownerMadeUnderTheFakeIsClosedByTheFake() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        do {
            let fd = try Syscalls.withProvider(kernel) { try OwnedFD.open("/dev/iommu") }
            #expect(kernel.openFDCount == 1)
            _ = fd
        }
        #expect(kernel.openFDCount == 0, "deinit outside the fake closed the fake's number on the real kernel")
        let fd = try Syscalls.withProvider(kernel) { try OwnedFD.open("/dev/iommu") }
        try fd.close()
        #expect(kernel.openFDCount == 0)
    }

    @Test func callsOnAnOwnedFDGoToTheKernelItWasMadeWith() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, arg in
            arg!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 7
            return 0
        }
        kernel.onIoctl(IOMMU_DESTROY) { _, _ in 0 }
        let ctx = try Syscalls.withProvider(kernel) { try IOMMUFD() }
        // Outside any provider, and under another one: still the fake that made it.
        let a = try IOAS(ctx)
        let other = FakeKernel()
        let b = try Syscalls.withProvider(other) { try IOAS(ctx) }
        #expect(a.objectID == 7 && b.objectID == 7)
        #expect(kernel.calls(IOMMU_IOAS_ALLOC).count == 2)
        #expect(other.calls.isEmpty)
        try a.destroy()
        try b.destroy()
        try ctx.close()
        #expect(kernel.openFDCount == 0)
    }

    @Test func memoryIsUnmappedThroughTheKernelThatMappedIt() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        RegionInfoTests.install(kernel)
        do {
            let buffer = try Syscalls.withProvider(kernel) { try DMABuffer(length: 4096) }
            let file = try Syscalls.withProvider(kernel) { try DMABuffer(length: 4096, backing: .memfd) }
            let bar = try Syscalls.withProvider(kernel) { () throws(VFIOError) -> MMIORegion in
                let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
                let region = try device.regionInfo(0)
                return try device.map(region: region, area: region.sparseAreas![0])
            }
            #expect(kernel.liveMappingCount == 3)
            _ = (buffer, file, bar)
        }
        #expect(kernel.liveMappingCount == 0, "munmap outside the fake went to the real kernel")
        #expect(kernel.openFDCount == 0)
    }
}
