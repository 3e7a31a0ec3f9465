import CVFIO
import SystemPackage
import Testing
import VFIOKit
import VFIOKitTestSupport

@Suite struct ArgumentTests {
    @Test func makeFillsArgszAndZeroes() {
        let a = vfio_device_info.make()
        #expect(a.argsz == UInt32(MemoryLayout<vfio_device_info>.size))
        #expect(a.flags == 0 && a.num_regions == 0)
        let m = iommu_ioas_map.make()
        #expect(m.size == UInt32(MemoryLayout<iommu_ioas_map>.size))
        #expect(m.iova == 0 && m.length == 0)
    }
}

@Suite struct ErrorTests {
    @Test func describesOperationErrnoObjectAndHint() {
        let e = VFIOError(operation: .syscall(.open), errno: .permissionDenied, object: "/dev/vfio/7")
        #expect(e.description.hasPrefix("open on /dev/vfio/7 failed: EACCES (13, Permission denied)"))
        #expect(e.remedies.first == .grantAccess(path: "/dev/vfio/7", uid: nil))
        #expect(e.hint?.contains("read and write access to /dev/vfio/7") == true)
    }

    @Test func missingIoctlNamesTheKernelThatAddedIt() {
        let e = VFIOError(operation: .ioctl(.iommuVEventQAlloc), errno: Errno(rawValue: ENOTTY), object: "/dev/iommu")
        #expect(e.hint?.contains("added in Linux 6.15") == true)
    }

    @Test func bindWithoutInterruptRemappingSaysSo() {
        let e = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .notPermitted, object: "0000:00:03.0")
        #expect(e.hint?.contains("allow_unsafe_interrupts") == true)
        #expect(e.hint?.contains("never sets it") == true)
    }

    @Test func ioctlErrorsNameTheIoctl() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, _ in -EOPNOTSUPP }
        try Syscalls.withProvider(kernel) {
            let fd = try OwnedFD.open("/dev/iommu")
            var arg = iommu_ioas_alloc.make()
            let error = #expect(throws: VFIOError.self) { _ = try fd.ioctl(.iommuIOASAlloc, &arg, object: "/dev/iommu") }
            #expect(error?.operation == .ioctl(.iommuIOASAlloc))
            #expect(error?.errno == .notSupported)
            try fd.close()
        }
        #expect(kernel.openFDCount == 0)
    }

    /// The explanation of a hand-written size needs the struct's type, which the
    /// inlinable `OwnedFD.ioctl` passes on as a metatype (not a generic parameter).
    @Test func shortArgumentSizeIsExplainedWithTheStructsType() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, _ in -EINVAL }
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        kernel.onIoctl(VFIO_DEVICE_GET_INFO) { _, _ in -EINVAL }
        try Syscalls.withProvider(kernel) {
            let fd = try OwnedFD.open("/dev/iommu")
            var arg = iommu_ioas_alloc.make()
            arg.size = 4
            let error = #expect(throws: VFIOError.self) { _ = try fd.ioctl(.iommuIOASAlloc, &arg) }
            #expect(error?.detail == "the argument's size is 4 bytes, less than the \(MemoryLayout<iommu_ioas_alloc>.size) "
                + "bytes of struct iommu_ioas_alloc: the kernel refuses an argument shorter than the fields it reads")
            let device = try OwnedFD.open("/dev/vfio/devices/vfio0")
            var info = vfio_device_info.make()
            info.argsz = 8
            let vfioError = #expect(throws: VFIOError.self) { _ = try device.ioctl(.vfioDeviceGetInfo, &info) }
            #expect(vfioError?.detail?.hasPrefix("the argument's argsz is 8 bytes, less than the "
                + "\(MemoryLayout<vfio_device_info>.size) bytes of struct vfio_device_info") == true)
            try fd.close()
            try device.close()
        }
    }
}

@Suite struct SyscallLayerTests {
    @Test func eintrIsRetriedButOtherErrorsAreNot() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        let attempts = Counter()
        kernel.onIoctl(IOMMU_DESTROY) { _, _ in attempts.next() < 3 ? -EINTR : 0 }
        try Syscalls.withProvider(kernel) {
            let fd = try OwnedFD.open("/dev/iommu")
            var arg = iommu_destroy.make()
            arg.id = 5
            _ = try fd.ioctl(.iommuDestroy, &arg)
            #expect(attempts.value == 4)
            let call = try #require(kernel.calls(IOMMU_DESTROY).last)
            #expect(call.argument(as: iommu_destroy.self).id == 5)
            #expect(call.argument(as: iommu_destroy.self).size == UInt32(MemoryLayout<iommu_destroy>.size))
        }
    }

    @Test func ownerClosesOnDeinitAndCloseIsIdempotent() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        try Syscalls.withProvider(kernel) {
            do {
                let fd = try OwnedFD.open("/dev/iommu")
                #expect(kernel.openFDCount == 1)
                _ = fd
            }
            #expect(kernel.openFDCount == 0)
            let fd = try OwnedFD.open("/dev/iommu")
            try fd.close()
            try fd.close()
            #expect(kernel.openFDCount == 0)
            #expect(throws: VFIOError.self) { try fd.withDescriptor(.ioctl(.iommuIOASAlloc)) { (_) throws(VFIOError) in } }
        }
    }

    @Test func openFailureNamesThePathAndHint() {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/7"] = .error(EBUSY)
        Syscalls.withProvider(kernel) {
            let error = #expect(throws: VFIOError.self) { _ = try OwnedFD.open("/dev/vfio/7") }
            #expect(error?.object == "/dev/vfio/7")
            #expect(error?.errno == .resourceBusy)
            #expect(error?.hint?.contains("another process") == true)
        }
    }
}

@Suite struct CapabilityChainTests {
    /// The kernel answers with a small argsz first; the second call with the
    /// size it asked for gets the chain, which parses in order and stops at 0.
    @Test func growsAndWalksTheChain() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        let headerSize = MemoryLayout<vfio_device_info>.size
        let full = UInt32(headerSize + 16 + 24)
        kernel.onIoctl(VFIO_DEVICE_GET_INFO) { _, arg in
            let info = arg!.assumingMemoryBound(to: vfio_device_info.self)
            let given = info.pointee.argsz
            info.pointee.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_CAPS
            info.pointee.num_regions = 9
            info.pointee.argsz = full
            guard given >= full else { return 0 }
            info.pointee.cap_offset = UInt32(headerSize)
            let raw = UnsafeMutableRawPointer(arg!)
            raw.storeBytes(of: vfio_info_cap_header(id: 7, version: 1, next: UInt32(headerSize + 16)),
                           toByteOffset: headerSize, as: vfio_info_cap_header.self)
            raw.storeBytes(of: vfio_info_cap_header(id: 9, version: 2, next: 0),
                           toByteOffset: headerSize + 16, as: vfio_info_cap_header.self)
            return 0
        }
        try Syscalls.withProvider(kernel) {
            let fd = try OwnedFD.open("/dev/vfio/devices/vfio0")
            let bytes = try fd.growingIoctl(.vfioDeviceGetInfo, vfio_device_info.make())
            #expect(bytes.count == Int(full))
            #expect(bytes.header.num_regions == 9)
            let caps = bytes.capabilities(from: bytes.header.cap_offset)
            #expect(caps.map(\.id) == [7, 9])
            #expect(caps.map(\.version) == [1, 2])
            let calls = kernel.calls(VFIO_DEVICE_GET_INFO)
            #expect(calls.count == 2)
            #expect(calls[0].argument(as: vfio_device_info.self).argsz == UInt32(headerSize))
            #expect(calls[1].argument(as: vfio_device_info.self).argsz == full)
        }
    }

    @Test func loopingChainStops() {
        var b = KernelBytes(vfio_device_info.make(), count: 64)
        b.withUnsafeBytesForTest { raw in
            raw.storeBytes(of: vfio_info_cap_header(id: 1, version: 1, next: 40), toByteOffset: 32, as: vfio_info_cap_header.self)
            raw.storeBytes(of: vfio_info_cap_header(id: 2, version: 1, next: 32), toByteOffset: 40, as: vfio_info_cap_header.self)
        }
        #expect(b.capabilities(from: 32).map(\.id) == [1, 2])
        #expect(b.capabilities(from: 60).isEmpty)  // header would run past the end
    }
}

final class Counter: @unchecked Sendable {
    private var n = 0
    private let lock = NSLockish()
    var value: Int { lock.with { n } }
    func next() -> Int { lock.with { defer { n += 1 }; return n } }
}

import Synchronization
final class NSLockish: Sendable {
    private let m = Mutex(())
    func with<R>(_ body: () -> R) -> R { m.withLock { _ in body() } }
}
