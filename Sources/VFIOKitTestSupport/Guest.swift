import VFIOKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Facts about the test guest (Scripts/vm.sh) for guest tests: whether we are
/// in it, the BDFs of its devices by role, and a stopgap sysfs binder.
///
/// Gating: a guest suite is skipped as a whole outside the guest (one
/// suite-level condition, ``Trait/guestOnly(_:)``). Inside the guest nothing is
/// skipped: everything a test needs is checked with `#require` or a throwing
/// `require...` here, so a guest that lacks it fails the test, and the run's
/// manifest (Tests/GuestManifest) fails the run when a test did not run.
public enum Guest {
    /// Whether this process runs in the test guest: Scripts/vm.sh's init sets
    /// VFIOKIT_GUEST=1. Nothing else is checked here on purpose: what the
    /// guest must provide is required by the tests (and by GuestEnvironmentTests).
    public static var inGuest: Bool { env("VFIOKIT_GUEST") == "1" }

    static func env(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        let s = String(cString: v)
        return s.isEmpty ? nil : s
    }

    /// The lone edu, alone in its IOMMU group.
    public static var edu: String? { env("VFIOKIT_EDU") }
    /// The two edu functions that share one IOMMU group (behind the
    /// PCIe-to-PCI bridge, or one multifunction slot under virtio-iommu).
    public static var eduPairA: String? { env("VFIOKIT_EDU_PAIR_A") }
    public static var eduPairB: String? { env("VFIOKIT_EDU_PAIR_B") }
    public static var bridge: String? { env("VFIOKIT_BRIDGE") }
    public static var nvme: String? { env("VFIOKIT_NVME") }
    /// intel, amd or virtio.
    public static var iommu: String? { env("VFIOKIT_IOMMU") }

    /// The emulated IOMMU of this guest.
    public enum IOMMUKind: String, Sendable, CaseIterable {
        case intel, amd, virtio
        /// Whether vm.sh puts the edu pair behind a PCIe-to-PCI bridge (a
        /// group of three); under virtio-iommu it is one multifunction slot
        /// (a group of two, no bridge): virtio-iommu cannot handle the alias.
        public var pairIsBehindABridge: Bool { self != .virtio }
    }

    /// The emulated IOMMU (VFIOKIT_IOMMU), or an error naming what is wrong.
    public static func requireIOMMU() throws(VFIOError) -> IOMMUKind {
        guard let s = iommu, let k = IOMMUKind(rawValue: s) else {
            throw VFIOError.invalid(.step("guest"), "VFIOKIT_IOMMU is \(iommu.map { "'\($0)'" } ?? "not set"); Scripts/vm.sh sets intel, amd or virtio")
        }
        return k
    }

    /// The BDF of a device role the guest must provide (VFIOKIT_EDU, ...).
    public static func require(_ role: String) throws(VFIOError) -> String {
        guard let v = env(role) else {
            throw VFIOError.invalid(.step("guest"), "\(role) is not set: the guest did not find that device (see the console log)")
        }
        return v
    }

    /// The lone edu's BDF, or a test failure error outside the guest.
    public static func requireEdu() throws(VFIOError) -> String { try require("VFIOKIT_EDU") }

    /// The bridge in front of the edu pair: required where the pair is behind
    /// one, required absent (nil) where it is not (virtio-iommu).
    public static func requireBridgeAsExpected() throws(VFIOError) -> String? {
        let kind = try requireIOMMU()
        if kind.pairIsBehindABridge { return try require("VFIOKIT_BRIDGE") }
        if let b = bridge {
            throw VFIOError.invalid(.step("guest"), "VFIOKIT_BRIDGE is \(b) under \(kind.rawValue), where the pair has no bridge")
        }
        return nil
    }

    static func writeFile(_ path: String, _ text: String) throws(VFIOError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw VFIOError(operation: .syscall(.open), errno: .init(rawValue: errno), object: path)
        }
        defer { close(fd) }
        let n = text.withCString { write(fd, $0, strlen($0)) }
        guard n >= 0 else { throw VFIOError(operation: .syscall(.write), errno: .init(rawValue: errno), object: "\(path) <- \(text)") }
    }

    static func readLinkName(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: "/").last.map(String.init)
    }

    /// The driver a device is bound to now, or nil.
    public static func driver(of bdf: String) -> String? {
        readLinkName("/sys/bus/pci/devices/\(bdf)/driver")
    }

    /// Binds `bdf` to vfio-pci (driver_override + drivers_probe) and returns the
    /// cdev name (`vfioN`). Stopgap until PCI/'s binder lands.
    @discardableResult
    public static func bindToVFIO(_ bdf: String) throws(VFIOError) -> String {
        let dev = "/sys/bus/pci/devices/\(bdf)"
        if let d = driver(of: bdf), d != "vfio-pci" {
            try writeFile("\(dev)/driver/unbind", bdf)
        }
        try writeFile("\(dev)/driver_override", "vfio-pci")
        if driver(of: bdf) != "vfio-pci" {
            try writeFile("/sys/bus/pci/drivers_probe", bdf)
        }
        guard driver(of: bdf) == "vfio-pci" else {
            throw VFIOError.invalid(.step(.bind), "\(bdf) did not bind to vfio-pci (driver now: \(driver(of: bdf) ?? "none"))", object: bdf)
        }
        var entries: [String] = []
        if let d = opendir("\(dev)/vfio-dev") {
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name.hasPrefix("vfio") { entries.append(name) }
            }
            closedir(d)
        }
        guard let cdev = entries.first else {
            throw VFIOError.invalid(.step(.bind), "\(bdf) is bound to vfio-pci but has no vfio-dev cdev", object: bdf)
        }
        return cdev
    }

    /// Binds `bdf` to `driver` (driver_override + drivers_probe), as a
    /// fixture step outside the library (e.g. pci-stub standing in for a
    /// kernel driver the device had). Throws unless `driver` is bound after.
    public static func bind(_ bdf: String, to driver: String) throws(VFIOError) {
        let dev = "/sys/bus/pci/devices/\(bdf)"
        if let d = self.driver(of: bdf), d != driver { try writeFile("\(dev)/driver/unbind", bdf) }
        try writeFile("\(dev)/driver_override", driver)
        if self.driver(of: bdf) != driver { try writeFile("/sys/bus/pci/drivers_probe", bdf) }
        guard self.driver(of: bdf) == driver else {
            throw VFIOError.invalid(.step(.bind), "\(bdf) did not bind to \(driver) (driver now: \(self.driver(of: bdf) ?? "none"))", object: bdf)
        }
    }

    /// The device's `driver_override` (nil when unset).
    public static func driverOverride(of bdf: String) -> String? {
        let fd = open("/sys/bus/pci/devices/\(bdf)/driver_override", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { return nil }
        var s = String(decoding: buf[0..<n], as: UTF8.self)
        while s.last?.isNewline == true { s.removeLast() }
        return s == "(null)" || s.isEmpty ? nil : s
    }

    /// Unbinds `bdf` from its driver and clears driver_override, leaving it with
    /// no driver (the guest's starting state for edu).
    public static func unbind(_ bdf: String) throws(VFIOError) {
        let dev = "/sys/bus/pci/devices/\(bdf)"
        if driver(of: bdf) != nil { try writeFile("\(dev)/driver/unbind", bdf) }
        try writeFile("\(dev)/driver_override", "\n")
    }

    /// The IOMMU group number of `bdf`.
    public static func iommuGroup(of bdf: String) -> String? {
        readLinkName("/sys/bus/pci/devices/\(bdf)/iommu_group")
    }

    /// Open fds of this process now (entries of /proc/self/fd, minus the one
    /// the listing itself uses).
    public static func openFDCount() -> Int {
        _ = symbolizerStarted
        return fdEntries(listed: listedFDs(), target: fdTarget).count
    }

    /// The numbers in /proc/self/fd, without the listing's own fd.
    private static func listedFDs() -> [Int32] {
        guard let d = opendir("/proc/self/fd") else { return [] }
        let own = dirfd(d)
        var list: [Int32] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let fd = Int32(name), fd != own { list.append(fd) }
        }
        closedir(d)
        return list
    }

    /// What `/proc/self/fd/N` links to, or nil when `fd` is not open (any more).
    private static func fdTarget(_ fd: Int32) -> String? {
        var buf = [CChar](repeating: 0, count: 512)
        let len = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        return len > 0 ? String(decoding: buf[..<len].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
    }

    /// The fds of `listed` that count, with their targets: not an fd on
    /// `/proc/<id>/stat` (libdispatch's worker-pool monitor reads its workers'
    /// `/proc/<tid>/stat` for a moment on a thread of its own, VFIOKit never
    /// opens one: a CI guest run's baseline caught one, `gone ["8:/proc/371/stat"]`),
    /// and not an fd that closed between the listing and the read of its target
    /// (it was not open then; such a stat file, kept, made a baseline one too
    /// high for good).
    package static func fdEntries(listed: [Int32], target: (Int32) -> String?) -> [(fd: Int32, target: String)] {
        listed.compactMap { fd in
            guard let t = target(fd) else { return nil }
            let parts = t.split(separator: "/")
            let runtimesProcStat = parts.count == 3 && parts[0] == "proc" && parts[2] == "stat" && parts[1].allSatisfy(\.isNumber)
            return runtimesProcStat ? nil : (fd, t)
        }
    }

    /// A sanitizer runtime (TSan, ASan) starts llvm-symbolizer, with two pipes to it,
    /// the first time it symbolizes a stack, and TSan symbolizes every race it then
    /// suppresses (Scripts/sanitizers/tsan.supp): an fd-leak check whose baseline was
    /// taken before would count those pipes as leaked. So the symbolizer is started
    /// before the first count, through the runtime's `__sanitizer_symbolize_pc` (looked
    /// up at run time: absent, as in a plain build, nothing happens).
    private static let symbolizerStarted: Bool = {
        typealias SymbolizePC = @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>, UnsafeMutablePointer<CChar>, Int) -> Void
        guard let symbol = dlsym(nil, "__sanitizer_symbolize_pc") else { return false }
        // Safety: the sanitizer interface declares it so (sanitizer/common_interface_defs.h).
        let symbolize = unsafeBitCast(symbol, to: SymbolizePC.self)
        var out = [CChar](repeating: 0, count: 256)
        symbolize(symbol, "%f", &out, out.count)
        return true
    }()

    /// What each open fd of this process refers to (`/proc/self/fd/N` -> target),
    /// "N:target" sorted, the directory's own fd left out: said in a failed fd-leak
    /// check, so the message names the fd that was leaked or closed twice.
    public static func openFDs() -> [String] {
        fdEntries(listed: listedFDs(), target: fdTarget).map { "\($0.fd):\($0.target)" }.sorted()
    }
}

import Testing

extension Trait where Self == ConditionTrait {
    /// The one condition of a guest suite: it runs only in the QEMU test guest
    /// and is skipped as a whole elsewhere (the host run), with a comment
    /// saying how to run it. Nothing inside a guest suite may skip.
    public static func guestOnly(_ suite: String) -> Self {
        .enabled(if: Guest.inGuest, Comment(rawValue:
            "runs in the QEMU test guest: Scripts/vm.sh -- .build/debug/VFIOKitPackageTests.xctest --testing-library swift-testing --filter \(suite)"))
    }
}

/// Guest tests share the guest's few devices and the process's fd table
/// (tests assert that /proc/self/fd is unchanged afterwards): they must not run
/// at the same time, across suites too (Swift Testing runs suites in
/// parallel; `.serialized` only orders tests within one suite). Every guest
/// suite carries this trait, which
/// takes one process-wide async lock around each test case, so it never
/// blocks a thread of the cooperative pool while waiting.
///
///     @Suite(.serialized, .exclusiveGuestDevices, .guestOnly("SuiteName"))
public struct ExclusiveGuestDevices: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        // Hold the lock per test case only (suites and test functions nest around cases).
        guard testCase != nil else { return try await function() }
        await GuestDeviceLock.shared.acquire()
        do {
            try await function()
        } catch {
            await GuestDeviceLock.shared.release()
            throw error
        }
        await GuestDeviceLock.shared.release()
    }
}

extension Trait where Self == ExclusiveGuestDevices {
    /// One test at a time on the guest's devices, process-wide.
    public static var exclusiveGuestDevices: Self { ExclusiveGuestDevices() }
}

/// A FIFO async mutex.
public actor GuestDeviceLock {
    public static let shared = GuestDeviceLock()
    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public func acquire() async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    public func release() {
        if waiters.isEmpty {
            held = false
        } else {
            waiters.removeFirst().resume()
        }
    }
}
