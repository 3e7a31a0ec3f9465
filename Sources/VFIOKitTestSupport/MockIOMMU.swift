import CIOMMUFDTest
import CVFIO
import Synchronization
import VFIOKit
import VFIOObjects
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension iommu_test_cmd: IOMMUArgument {}

/// The kernel's iommufd mock IOMMU (CONFIG_IOMMUFD_TEST), driven through
/// `IOMMU_TEST_CMD`: mock devices with mock paging domains, and checks of
/// what the mock domains map, which pages are pinned, dirty bits, faults and
/// vIOMMU events. Every iommufd path can be exercised with it, no hardware needed.
///
/// Test support only: not part of the VFIOKit library product.
public enum MockIOMMU {
    /// Mock domain geometry (MOCK_IOMMUPT_DEFAULT): the aperture and page size.
    public static let apertureStart = UInt64(MOCK_APERTURE_START)
    public static let apertureLast = UInt64(MOCK_APERTURE_LAST)
    public static let pageSize = UInt64(MOCK_PAGE_SIZE)
    /// The selftest's type numbers.
    public static let hwptDataType = IOMMU_HWPT_DATA_SELFTEST
    public static let hwptInvalidateType = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
    public static let viommuType = IOMMU_VIOMMU_TYPE_SELFTEST
    public static let viommuInvalidateType = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
    public static let veventqType = IOMMU_VEVENTQ_TYPE_SELFTEST
    public static let hwQueueType = IOMMU_HW_QUEUE_TYPE_SELFTEST
    public static let iotlbDefault = IOMMU_TEST_IOTLB_DEFAULT
    public static let deviceCacheDefault = IOMMU_TEST_DEV_CACHE_DEFAULT
    public static let pasidWidth = UInt8(MOCK_PASID_WIDTH)

    /// The kernel selftest's request, outside the uapi table: errors name it as a step.
    static let testCommand: VFIOError.Operation = .step("IOMMU_TEST_CMD")

    /// Requires the kernel's mock IOMMU: /dev/iommu opens and `IOMMU_TEST_CMD`
    /// is known (a kernel without CONFIG_IOMMUFD_TEST answers ENOTTY). Throws
    /// the error that stands in the way, so a guest without mock domains fails
    /// every mock-domain test instead of skipping it.
    public static func requireAvailable() throws(VFIOError) {
        let ctx: IOMMUFD
        do throws(VFIOError) { ctx = try IOMMUFD() } catch {
            var e = error
            e.detail = (e.detail.map { $0 + "; " } ?? "") + "the mock-domain tests need /dev/iommu (CONFIG_IOMMUFD)"
            throw e
        }
        var cmd = iommu_test_cmd.make()
        cmd.op = UInt32(IOMMU_TEST_OP_MD_CHECK_REFS)
        // length 0: checks nothing, succeeds on a kernel with the selftest.
        do throws(VFIOError) { try run(ctx, &cmd, what: "probe (IOMMU_TEST_OP_MD_CHECK_REFS, length 0)") } catch {
            var e = error
            e.detail = (e.detail.map { $0 + "; " } ?? "")
                + "the kernel's iommufd selftest (CONFIG_IOMMUFD_TEST) is needed; Scripts/guest-kernel.config enables it"
            throw e
        }
        try ctx.close()
    }

    /// Issues one test command; errors name the op.
    @discardableResult
    static func run(_ ctx: IOMMUFD, _ cmd: inout iommu_test_cmd, what: @autoclosure () -> String) throws(VFIOError)
        -> iommu_test_cmd
    {
        try ctx.unsafeIoctl(IOMMU_TEST_CMD, as: testCommand, &cmd, object: what())
        return cmd
    }

    static func command(_ op: Int) -> iommu_test_cmd {
        var c = iommu_test_cmd.make()
        c.op = UInt32(op)
        return c
    }

    // MARK: checks on mock domains

    /// Checks that mock HWPT `hwpt` maps `[iova, iova + length)` to the pages at
    /// `address` (EINVAL from the kernel when it does not).
    public static func checkMap(_ ctx: IOMMUFD, hwpt: UInt32, iova: UInt64, length: UInt64,
                                address: UnsafeRawPointer) throws(VFIOError)
    {
        var c = command(IOMMU_TEST_OP_MD_CHECK_MAP)
        c.id = hwpt
        c.check_map.iova = iova
        c.check_map.length = length
        c.check_map.uptr = UInt64(UInt(bitPattern: address))
        try run(ctx, &c, what: "MD_CHECK_MAP HWPT \(hwpt) IOVA 0x\(String(iova, radix: 16))")
    }

    /// Whether every page of `[address, address + length)` is pinned exactly
    /// `pins` times (0 = not pinned). Throws on other errors.
    public static func pinCount(_ ctx: IOMMUFD, address: UnsafeRawPointer, length: Int, is pins: UInt32)
        throws(VFIOError) -> Bool
    {
        var c = command(IOMMU_TEST_OP_MD_CHECK_REFS)
        c.check_refs.length = UInt64(length)
        c.check_refs.uptr = UInt64(UInt(bitPattern: address))
        c.check_refs.refs = pins
        do {
            try run(ctx, &c, what: "MD_CHECK_REFS")
            return true
        } catch where error.errno == .ioError {
            return false
        }
    }

    /// Marks `[iova, iova + length)` of mock HWPT `hwpt` dirty at `pageSize`
    /// for the pages whose bits are set in `bitmap`; returns how many the mock set.
    public static func setDirty(_ ctx: IOMMUFD, hwpt: UInt32, iova: UInt64, length: UInt64, pageSize: UInt64,
                                bitmap: inout [UInt64]) throws(VFIOError) -> UInt64
    {
        var c = command(IOMMU_TEST_OP_DIRTY)
        c.id = hwpt
        c.dirty.iova = iova
        c.dirty.length = length
        c.dirty.page_size = pageSize
        let r: Result<UInt64, VFIOError> = bitmap.withUnsafeMutableBufferPointer { p in
            c.dirty.uptr = UInt64(UInt(bitPattern: p.baseAddress))
            do throws(VFIOError) { return .success(try run(ctx, &c, what: "DIRTY HWPT \(hwpt)").dirty.out_nr_dirty) }
            catch { return .failure(error) }
        }
        return try r.get()
    }

    /// The mock nested domain's IOTLB entry `index` value.
    public static func checkIOTLB(_ ctx: IOMMUFD, hwpt: UInt32, index: UInt32, expected: UInt32) throws(VFIOError) {
        var c = command(IOMMU_TEST_OP_MD_CHECK_IOTLB)
        c.id = hwpt
        c.check_iotlb.id = index
        c.check_iotlb.iotlb = expected
        try run(ctx, &c, what: "MD_CHECK_IOTLB HWPT \(hwpt) entry \(index)")
    }

    /// Checks mock device cache entry `index` (vIOMMU invalidation target).
    public static func checkDeviceCache(_ ctx: IOMMUFD, device: UInt32, index: UInt32, expected: UInt32) throws(VFIOError) {
        var c = command(IOMMU_TEST_OP_DEV_CHECK_CACHE)
        c.id = device
        c.check_dev_cache.id = index
        c.check_dev_cache.cache = expected
        try run(ctx, &c, what: "DEV_CHECK_CACHE device \(device) entry \(index)")
    }

    /// Reserves `[start, start + length)` in `ioas` as a mock device's
    /// reserved region would (an MSI window).
    public static func addReserved(_ ioas: IOAS, start: UInt64, length: UInt64) throws(VFIOError) {
        var c = command(IOMMU_TEST_OP_ADD_RESERVED)
        c.add_reserved.start = start
        c.add_reserved.length = length
        try ioas.withLiveObjectID(MockIOMMU.testCommand) { (id) throws(VFIOError) in
            c.id = id
            try run(ioas.iommufd, &c, what: "ADD_RESERVED \(ioas.label)")
        }
    }

    /// Makes the mock device `device` report an I/O page fault.
    public static func triggerPageFault(_ ctx: IOMMUFD, device: UInt32, pasid: UInt32, group: UInt32,
                                        permissions: PageFault.Permissions, address: UInt64) throws(VFIOError)
    {
        var c = command(IOMMU_TEST_OP_TRIGGER_IOPF)
        c.trigger_iopf.dev_id = device
        c.trigger_iopf.pasid = pasid
        c.trigger_iopf.grpid = group
        c.trigger_iopf.perm = permissions.rawValue
        c.trigger_iopf.addr = address
        try run(ctx, &c, what: "TRIGGER_IOPF device \(device)")
    }

    /// Makes the mock device `device` report one vIOMMU event (to its vDEVICE's vEVENTQ).
    public static func triggerVEvent(_ ctx: IOMMUFD, device: UInt32) throws(VFIOError) {
        var c = command(IOMMU_TEST_OP_TRIGGER_VEVENT)
        c.trigger_vevent.dev_id = device
        try run(ctx, &c, what: "TRIGGER_VEVENT device \(device)")
    }

    /// Limits how many pages the kernel pins per batch (the selftests' temp memory limit).
    public static func setTemporaryMemoryLimit(_ ctx: IOMMUFD, _ limit: UInt32) throws(VFIOError) {
        var c = command(IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT)
        c.memory_limit.limit = limit
        try run(ctx, &c, what: "SET_TEMP_MEMORY_LIMIT")
    }

    // MARK: leak checks

    /// Ids in `1...upTo` that still name an object in `ctx`. Found with
    /// `IOMMU_DESTROY` (anything but ENOENT means the id existed), so call it
    /// only when everything should be gone: it destroys what it finds.
    public static func leftoverObjects(_ ctx: IOMMUFD, upTo: UInt32 = 64) -> [UInt32] {
        var found: [UInt32] = []
        for id in 1...upTo {
            do {
                try ctx.destroy(objectID: id)
                found.append(id)
            } catch {
                if error.errno != .noSuchFileOrDirectory { found.append(id) }
            }
        }
        return found
    }

    /// Whether the process's fd count settles at exactly `expected` within
    /// `seconds`: a leak check that tolerates tests of other suites opening
    /// fds for a moment (a leak keeps the count above for good), and that also
    /// rejects fewer fds than before (something closed an fd it did not own,
    /// a double close).
    public static func fdCountSettles(at expected: Int, seconds: Double = 3) -> Bool {
        var waited = 0.0
        while Guest.openFDCount() != expected {
            if waited >= seconds { return false }
            usleep(20_000)
            waited += 0.02
        }
        return true
    }
}

/// A mock device bound to an iommufd and attached to a mock domain: an
/// iommufd device (``deviceID``, for HWPT_ALLOC, GET_HW_INFO, vIOMMU) without
/// hardware. Destroying it detaches and unbinds.
public final class MockDevice: Sendable {
    public let iommufd: IOMMUFD
    /// The selftest device object (`out_stdev_id`): destroying it removes the device.
    public let stdevID: UInt32
    /// The iommufd device id (`out_idev_id`), as `VFIO_DEVICE_BIND_IOMMUFD` gives for real devices.
    public let deviceID: UInt32
    private let attached: Mutex<(hwpt: UInt32, target: any IOMMUAttachTarget)>
    private let destroyed = Mutex(false)

    /// Mock device flags (`MOCK_FLAGS_DEVICE_*`).
    public struct Flags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// The device's IOMMU cannot track dirty pages.
        public static let noDirtyTracking = Flags(rawValue: UInt32(MOCK_FLAGS_DEVICE_NO_DIRTY))
        /// The device supports PASIDs.
        public static let pasid = Flags(rawValue: UInt32(MOCK_FLAGS_DEVICE_PASID))
    }

    /// Creates a mock device and attaches it to `target`. On an IOAS the
    /// kernel makes (or reuses) an automatic mock paging domain: ``hwptID``.
    public init(attachedTo target: any IOMMUAttachTarget, flags: Flags = []) throws(VFIOError) {
        var c = MockIOMMU.command(flags.isEmpty ? IOMMU_TEST_OP_MOCK_DOMAIN : IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS)
        if !flags.isEmpty { c.mock_domain_flags.dev_flags = flags.rawValue }
        try target.withLiveObjectID(MockIOMMU.testCommand) { (id) throws(VFIOError) in
            c.id = id
            try MockIOMMU.run(target.iommufd, &c, what: "MOCK_DOMAIN on object \(id)")
        }
        iommufd = target.iommufd
        stdevID = c.mock_domain.out_stdev_id
        deviceID = c.mock_domain.out_idev_id
        attached = Mutex((c.mock_domain.out_hwpt_id, target))
    }

    /// The id of the domain (HWPT) the device is attached to now.
    public var hwptID: UInt32 { attached.withLock { $0.hwpt } }
    /// What the device is attached to now.
    public var target: any IOMMUAttachTarget { attached.withLock { $0.target } }

    /// Moves the device to `target` without a window of no translation;
    /// returns the new domain's id.
    @discardableResult
    public func replace(with target: any IOMMUAttachTarget) throws(VFIOError) -> UInt32 {
        var c = MockIOMMU.command(IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE)
        c.id = stdevID
        try target.withLiveObjectID(MockIOMMU.testCommand) { (id) throws(VFIOError) in
            c.mock_domain_replace.pt_id = id
            try MockIOMMU.run(iommufd, &c, what: "MOCK_DOMAIN_REPLACE device \(stdevID) → object \(id)")
        }
        let hwpt = c.mock_domain_replace.pt_id
        attached.withLock { $0 = (hwpt, target) }
        return hwpt
    }

    /// Attaches PASID `pasid` of the device to `hwpt`.
    public func attach(pasid: UInt32, to hwpt: HWPT) throws(VFIOError) {
        var c = MockIOMMU.command(IOMMU_TEST_OP_PASID_ATTACH)
        c.id = stdevID
        c.pasid_attach.pasid = pasid
        try hwpt.withLiveObjectID(MockIOMMU.testCommand) { (id) throws(VFIOError) in
            c.pasid_attach.pt_id = id
            try MockIOMMU.run(iommufd, &c, what: "PASID_ATTACH device \(stdevID) pasid \(pasid)")
        }
    }

    /// Detaches PASID `pasid`.
    public func detach(pasid: UInt32) throws(VFIOError) {
        var c = MockIOMMU.command(IOMMU_TEST_OP_PASID_DETACH)
        c.id = stdevID
        c.pasid_detach.pasid = pasid
        try MockIOMMU.run(iommufd, &c, what: "PASID_DETACH device \(stdevID) pasid \(pasid)")
    }

    /// Checks which HWPT PASID `pasid` is attached to (0: none).
    public func checkPASID(_ pasid: UInt32, attachedTo hwptID: UInt32) throws(VFIOError) {
        var c = MockIOMMU.command(IOMMU_TEST_OP_PASID_CHECK_HWPT)
        c.id = stdevID
        c.pasid_check.pasid = pasid
        c.pasid_check.hwpt_id = hwptID
        try MockIOMMU.run(iommufd, &c, what: "PASID_CHECK_HWPT device \(stdevID) pasid \(pasid)")
    }

    /// Detaches and removes the device.
    public func destroy() throws(VFIOError) {
        try destroyed.withLock { (d: inout Bool) throws(VFIOError) in
            guard !d else { return }
            if !iommufd.fd.isClosed { try iommufd.destroy(objectID: stdevID) }
            d = true
        }
    }

    deinit { try? destroy() }
}

/// Runs code the way an unprivileged driver would see memory accounting: the
/// calling thread without CAP_IPC_LOCK in its effective set (so pinned pages
/// are charged), and the process's soft `RLIMIT_MEMLOCK` set to `limit`.
/// Both are restored afterwards. The kernel's selftests do the same
/// (drop_cap_ipc_lock + rlimit). The body must stay on the calling thread
/// (synchronous): capabilities are per thread.
public enum Unprivileged {
    private typealias CapFn = @convention(c) (UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Int32
    private static let capVersion3: UInt32 = 0x2008_0522
    private static let capIPCLock: UInt32 = 14

    private static func capFunction(_ name: String) -> CapFn? {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(sym, to: CapFn.self)
    }

    /// Whether `withMemlockLimit` can drop CAP_IPC_LOCK here (glibc exports capget/capset).
    public static var available: Bool { capFunction("capget") != nil && capFunction("capset") != nil }

    public static func withMemlockLimit<R>(_ limit: UInt64, _ body: () throws -> R) throws -> R {
        guard let capget = capFunction("capget"), let capset = capFunction("capset") else {
            throw VFIOError.invalid(.step("capset"), "glibc does not export capget/capset")
        }
        var header: (UInt32, Int32) = (capVersion3, 0)
        // two __user_cap_data_struct: (effective, permitted, inheritable) x 2
        var data: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0, 0, 0)
        let saved: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = try withUnsafeMutableBytes(of: &header) { h in
            try withUnsafeMutableBytes(of: &data) { d in
                guard capget(h.baseAddress!, d.baseAddress!) == 0 else {
                    throw VFIOError(operation: .step("capget"), errno: .init(rawValue: errno))
                }
                return d.load(as: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32).self)
            }
        }
        var dropped = saved
        dropped.0 &= ~(1 << capIPCLock)
        try withUnsafeMutableBytes(of: &header) { h in
            try withUnsafeMutableBytes(of: &dropped) { d in
                guard capset(h.baseAddress!, d.baseAddress!) == 0 else {
                    throw VFIOError(operation: .step("capset"), errno: .init(rawValue: errno))
                }
            }
        }
        var old = rlimit()
        getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &old)
        var low = old
        low.rlim_cur = rlim_t(limit)
        setrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &low)
        defer {
            setrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &old)
            var restore = saved
            header = (capVersion3, 0)
            withUnsafeMutableBytes(of: &header) { h in
                withUnsafeMutableBytes(of: &restore) { d in _ = capset(h.baseAddress!, d.baseAddress!) }
            }
        }
        return try body()
    }
}

/// A mock in-kernel user of an IOAS (an "access", as emulated devices and
/// mdevs use): reads and writes guest memory by IOVA through the IOAS, like a
/// device's DMA but done by the CPU. Keeps the IOAS alive and busy; closing
/// it (``close()`` or deinit) removes it.
public final class MockAccess: Sendable {
    public let ioas: IOAS
    /// The access's fd (`out_access_fd`); it is also its id in test commands.
    public let fd: Int32
    private let closed = Mutex(false)

    public init(ioas: IOAS) throws(VFIOError) {
        var c = MockIOMMU.command(IOMMU_TEST_OP_CREATE_ACCESS)
        try ioas.withLiveObjectID(MockIOMMU.testCommand) { (id) throws(VFIOError) in
            c.id = id
            try MockIOMMU.run(ioas.iommufd, &c, what: "CREATE_ACCESS \(ioas.label)")
        }
        self.ioas = ioas
        fd = Int32(bitPattern: c.create_access.out_access_fd)
    }

    /// Reads `count` bytes at `iova`.
    public func read(iova: UInt64, count: Int) throws(VFIOError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try transfer(iova: iova, &out, write: false)
        return out
    }

    /// Writes `bytes` at `iova`.
    public func write(iova: UInt64, _ bytes: [UInt8]) throws(VFIOError) {
        var b = bytes
        try transfer(iova: iova, &b, write: true)
    }

    private func transfer(iova: UInt64, _ bytes: inout [UInt8], write: Bool) throws(VFIOError) {
        var c = MockIOMMU.command(IOMMU_TEST_OP_ACCESS_RW)
        c.id = UInt32(bitPattern: fd)
        c.access_rw.iova = iova
        c.access_rw.length = UInt64(bytes.count)
        c.access_rw.flags = write ? UInt32(MOCK_ACCESS_RW_WRITE) : 0
        let ctx = ioas.iommufd
        let r: Result<Void, VFIOError> = bytes.withUnsafeMutableBytes { p in
            c.access_rw.uptr = UInt64(UInt(bitPattern: p.baseAddress))
            do throws(VFIOError) { try MockIOMMU.run(ctx, &c, what: "ACCESS_RW IOVA 0x\(String(iova, radix: 16))"); return .success(()) }
            catch { return .failure(error) }
        }
        try r.get()
    }

    public func close() {
        closed.withLock { c in
            if !c { _ = Glibc.close(fd); c = true }
        }
    }

    deinit { close() }
}
