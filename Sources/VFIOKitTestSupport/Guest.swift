import VFIOKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Facts about the test guest (Scripts/vm.sh) for guest tests: whether we are
/// in it, the BDFs of its devices by role, and a stopgap sysfs binder.
public enum Guest {
    /// In the guest: /dev/iommu exists and VFIOKIT_EDU names the lone edu.
    public static var available: Bool {
        access("/dev/iommu", F_OK) == 0 && env("VFIOKIT_EDU") != nil
    }

    static func env(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        let s = String(cString: v)
        return s.isEmpty ? nil : s
    }

    /// The lone edu, alone in its IOMMU group.
    public static var edu: String? { env("VFIOKIT_EDU") }
    /// The two edu functions behind the PCIe-to-PCI bridge (one IOMMU group with it).
    public static var eduPairA: String? { env("VFIOKIT_EDU_PAIR_A") }
    public static var eduPairB: String? { env("VFIOKIT_EDU_PAIR_B") }
    public static var bridge: String? { env("VFIOKIT_BRIDGE") }
    public static var nvme: String? { env("VFIOKIT_NVME") }
    /// intel, amd or virtio.
    public static var iommu: String? { env("VFIOKIT_IOMMU") }

    /// The lone edu's BDF, or a test failure error outside the guest.
    public static func requireEdu() throws -> String {
        guard let e = edu else { throw VFIOError.invalid("guest", "VFIOKIT_EDU is not set") }
        return e
    }

    static func writeFile(_ path: String, _ text: String) throws(VFIOError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw VFIOError(operation: "open", errno: .init(rawValue: errno), object: path)
        }
        defer { close(fd) }
        let n = text.withCString { write(fd, $0, strlen($0)) }
        guard n >= 0 else { throw VFIOError(operation: "write", errno: .init(rawValue: errno), object: "\(path) <- \(text)") }
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
            throw VFIOError.invalid("bind", "\(bdf) did not bind to vfio-pci (driver now: \(driver(of: bdf) ?? "none"))", object: bdf)
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
            throw VFIOError.invalid("bind", "\(bdf) is bound to vfio-pci but has no vfio-dev cdev", object: bdf)
        }
        return cdev
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
        guard let d = opendir("/proc/self/fd") else { return -1 }
        var n = 0
        while readdir(d) != nil { n += 1 }
        closedir(d)
        return n - 3  // ".", "..", and the directory's own fd
    }
}

import Testing

/// Guest tests share the guest's few devices: tests that touch them must not
/// run at the same time, across suites too (Swift Testing runs suites in
/// parallel; `.serialized` only orders tests within one suite). This trait
/// takes one process-wide async lock around each test case, so it never
/// blocks a thread of the cooperative pool while waiting.
///
///     @Suite(.serialized, .exclusiveGuestDevices, .enabled(if: Guest.available))
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
