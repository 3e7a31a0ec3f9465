import CVFIO
import Synchronization
import SystemPackage
import Testing
import VFIOCommands
import VFIOKit
@testable import VFIOObjects
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A fake /dev/iommu: IOAS_ALLOC hands out ids from 7, DESTROY succeeds and is recorded.
func iommuKernel() -> FakeKernel {
    let k = FakeKernel()
    k.files["/dev/iommu"] = .node
    let next = Mutex<UInt32>(7)
    k.onIoctl(IOMMU_IOAS_ALLOC) { _, a in
        a!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = next.withLock { n in defer { n += 1 }; return n }
        return 0
    }
    k.onIoctl(IOMMU_DESTROY) { _, _ in 0 }
    return k
}

func arg<T>(_ p: UnsafeMutableRawPointer?, _: T.Type) -> UnsafeMutablePointer<T> { p!.assumingMemoryBound(to: T.self) }

@Suite struct IOMMUFDEncodingTests {
    @Test func ioasAllocAndDestroyOnDeinit() throws {
        let k = iommuKernel()
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            do {
                let ioas = try IOAS(ctx)
                #expect(ioas.objectID == 7)
                let alloc = try #require(k.calls(IOMMU_IOAS_ALLOC).first).argument(as: iommu_ioas_alloc.self)
                #expect(alloc.size == UInt32(MemoryLayout<iommu_ioas_alloc>.size))
                #expect(alloc.flags == 0)
            }
            let d = try #require(k.calls(IOMMU_DESTROY).first).argument(as: iommu_destroy.self)
            #expect(d.id == 7)
            #expect(k.calls(IOMMU_DESTROY).count == 1)
            try ctx.close()
        }
        #expect(k.openFDCount == 0)
    }

    @Test func destroyEBUSYSaysWhatUsesIt() throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_DESTROY) { _, _ in -EBUSY }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let e = #expect(throws: VFIOError.self) { try ioas.destroy() }
            #expect(e?.operation == .ioctl(.iommuDestroy))
            #expect(e?.object == "IOAS 7")
            #expect(e?.description.contains("still in use") == true)
            #expect(e?.hint?.contains("detach") == true)
            k.onIoctl(IOMMU_DESTROY) { _, _ in 0 }
            try ioas.destroy()
            try ioas.destroy()  // once only
            #expect(k.calls(IOMMU_DESTROY).count == 2)
        }
    }

    @Test(arguments: [(UInt64?.none, true, true), (0x10_0000, true, false), (0x20_0000, false, true)])
    func mapEncodesFlagsAndReturnsTheIOVA(_ iova: UInt64?, _ readable: Bool, _ writable: Bool) throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_IOAS_MAP) { _, a in
            let m = arg(a, iommu_ioas_map.self)
            if m.pointee.flags & UInt32(IOMMU_IOAS_MAP_FIXED_IOVA.rawValue) == 0 { m.pointee.iova = 0xabc000 }
            return 0
        }
        k.onIoctl(IOMMU_IOAS_UNMAP) { _, _ in 0 }  // length stays as asked: a full unmap
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let buf = try DMABuffer(length: 8192)
            let m = try ioas.map(buf, at: iova, readable: readable, writable: writable)
            #expect(m.iova == (iova ?? 0xabc000))
            #expect(m.length == 8192)
            let c = try #require(k.calls(IOMMU_IOAS_MAP).first).argument(as: iommu_ioas_map.self)
            var flags: UInt32 = 0
            if iova != nil { flags |= UInt32(IOMMU_IOAS_MAP_FIXED_IOVA.rawValue) }
            if readable { flags |= UInt32(IOMMU_IOAS_MAP_READABLE.rawValue) }
            if writable { flags |= UInt32(IOMMU_IOAS_MAP_WRITEABLE.rawValue) }
            #expect(c.flags == flags)
            #expect(c.ioas_id == 7 && c.user_va == UInt64(buf.address) && c.length == 8192)
            #expect(c.iova == (iova ?? 0))
            try m.unmap()
            let u = try #require(k.calls(IOMMU_IOAS_UNMAP).first).argument(as: iommu_ioas_unmap.self)
            #expect(u.iova == (iova ?? 0xabc000) && u.length == 8192 && u.ioas_id == 7)
        }
        #expect(k.calls(IOMMU_IOAS_UNMAP).count == 1)  // consuming unmap: deinit does not unmap again
    }

    @Test func droppedMappingUnmapsExactlyOnce() throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_IOAS_MAP) { _, _ in 0 }
        k.onIoctl(IOMMU_IOAS_UNMAP) { _, _ in 0 }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            do {
                let buf = try DMABuffer(length: 4096)
                _ = try ioas.map(buf, at: 0x1000)
            }
            #expect(k.calls(IOMMU_IOAS_UNMAP).count == 1)
        }
    }

    @Test func enomemNamesTheMemlockLimitAndTheSize() throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_IOAS_MAP) { _, _ in -ENOMEM }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let buf = try DMABuffer(length: 1 << 20)
            let e = #expect(throws: VFIOError.self) { _ = try ioas.map(buf, at: 0x100000) }
            let text = e?.description ?? ""
            #expect(text.contains("IOMMU_IOAS_MAP on IOAS 7 failed: ENOMEM"))
            #expect(text.contains("asked to pin 1048576 bytes at IOVA 0x100000"))
            #expect(text.contains("RLIMIT_MEMLOCK is \(try MemlockLimit.current().description)"))
            #expect(e?.remedies.contains { $0.kind == .raiseMemlock } == true)
            #expect(CLIWording.text(e?.remedies ?? [])?.contains("ulimit -l") == true)
        }
    }

    @Test func shortUnmapIsAnErrorAndUnmapAllCoversEverything() throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_IOAS_UNMAP) { _, a in
            let u = arg(a, iommu_ioas_unmap.self)
            u.pointee.length = u.pointee.length == UInt64.max ? 12288 : 4096
            return 0
        }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let e = #expect(throws: VFIOError.self) { _ = try ioas.unmap(iova: 0x1000, length: 8192) }
            #expect(e?.description.contains("short unmap") == true)
            #expect(e?.description.contains("unmapped 4096") == true)
            #expect(try ioas.unmapAll() == 12288)
            let all = try #require(k.calls(IOMMU_IOAS_UNMAP).last).argument(as: iommu_ioas_unmap.self)
            #expect(all.iova == 0 && all.length == UInt64.max)
        }
    }

    @Test func unmapENOENTExplainsSplitting() throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_IOAS_UNMAP) { _, _ in -ENOENT }
        try Syscalls.withProvider(k) {
            let ioas = try IOAS(try IOMMUFD())
            let e = #expect(throws: VFIOError.self) { _ = try ioas.unmap(iova: 0x2000, length: 4096) }
            #expect(e?.errno == .noSuchFileOrDirectory)
            #expect(e?.description.contains("splits a mapping") == true)
        }
    }

    @Test func iovaRangesRetriesOnEMSGSIZE() throws {
        let k = iommuKernel()
        let calls = Mutex(0)
        k.onIoctl(IOMMU_IOAS_IOVA_RANGES) { _, a in
            let r = arg(a, iommu_ioas_iova_ranges.self)
            calls.withLock { $0 += 1 }
            let needed: UInt32 = 6
            let room = r.pointee.num_iovas
            r.pointee.out_iova_alignment = 4096
            let out = UnsafeMutablePointer<iommu_iova_range>(bitPattern: UInt(r.pointee.allowed_iovas))!
            for i in 0..<min(room, needed) {
                out[Int(i)] = iommu_iova_range(start: UInt64(i) * 0x10000, last: UInt64(i) * 0x10000 + 0xfff)
            }
            r.pointee.num_iovas = needed
            return room < needed ? -EMSGSIZE : 0
        }
        try Syscalls.withProvider(k) {
            let ioas = try IOAS(try IOMMUFD())
            let ranges = try ioas.iovaRanges()
            #expect(ranges.ranges.count == 6)
            #expect(ranges.ranges[5] == 0x50000...0x50fff)
            #expect(ranges.alignment == 4096)
            #expect(ranges.contains(iova: 0x10000, length: 0x1000))
            #expect(!ranges.contains(iova: 0x10000, length: 0x1001))
            #expect(!ranges.contains(iova: UInt64.max, length: 2))
        }
        #expect(calls.withLock { $0 } == 2)
    }

    @Test func allowIOVAsPassesInclusiveRanges() throws {
        let k = iommuKernel()
        let seen = Mutex<[iommu_iova_range]>([])
        k.onIoctl(IOMMU_IOAS_ALLOW_IOVAS) { _, a in
            let r = arg(a, iommu_ioas_allow_iovas.self).pointee
            let p = UnsafePointer<iommu_iova_range>(bitPattern: UInt(r.allowed_iovas))!
            seen.withLock { $0 = Array(UnsafeBufferPointer(start: p, count: Int(r.num_iovas))) }
            return 0
        }
        try Syscalls.withProvider(k) {
            let ioas = try IOAS(try IOMMUFD())
            try ioas.allowIOVAs([0x1000...0x1fff, 0x10000...0xfffff])
        }
        let r = seen.withLock { $0 }
        #expect(r.map(\.start) == [0x1000, 0x10000])
        #expect(r.map(\.last) == [0x1fff, 0xfffff])
    }

    @Test func copyAndOptionsAndCompatEncodings() throws {
        let k = iommuKernel()
        k.onIoctl(IOMMU_IOAS_COPY) { _, a in arg(a, iommu_ioas_copy.self).pointee.dst_iova = 0x777000; return 0 }
        k.onIoctl(IOMMU_OPTION) { _, a in arg(a, iommu_option.self).pointee.val64 = 1; return 0 }
        k.onIoctl(IOMMU_VFIO_IOAS) { _, a in
            let v = arg(a, iommu_vfio_ioas.self)
            if v.pointee.op == UInt16(IOMMU_VFIO_IOAS_GET.rawValue) { return -ENODEV }
            return 0
        }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let a = try IOAS(ctx), b = try IOAS(ctx)
            #expect(try b.copy(from: a, sourceIOVA: 0x4000, length: 8192, to: nil, writable: false) == 0x777000)
            let c = try #require(k.calls(IOMMU_IOAS_COPY).first).argument(as: iommu_ioas_copy.self)
            #expect(c.src_ioas_id == 7 && c.dst_ioas_id == 8 && c.src_iova == 0x4000 && c.length == 8192)
            #expect(c.flags == UInt32(IOMMU_IOAS_MAP_READABLE.rawValue))
            #expect(try ctx.rlimitMode() == .perProcess)
            try ctx.setRlimitMode(.perUser)
            #expect(try a.hugePages())
            let opts = k.calls(IOMMU_OPTION).map { $0.argument(as: iommu_option.self) }
            #expect(opts.map(\.option_id) == [UInt32(IOMMU_OPTION_RLIMIT_MODE.rawValue), UInt32(IOMMU_OPTION_RLIMIT_MODE.rawValue),
                                             UInt32(IOMMU_OPTION_HUGE_PAGES.rawValue)])
            #expect(opts.map(\.op) == [UInt16(IOMMU_OPTION_OP_GET.rawValue), UInt16(IOMMU_OPTION_OP_SET.rawValue),
                                      UInt16(IOMMU_OPTION_OP_GET.rawValue)])
            #expect(opts.map(\.object_id) == [0, 0, 7])
            #expect(try ctx.compatibilityIOASID() == nil)
            try ctx.setCompatibilityIOAS(b)
            let set = try #require(k.calls(IOMMU_VFIO_IOAS).last).argument(as: iommu_vfio_ioas.self)
            #expect(set.op == UInt16(IOMMU_VFIO_IOAS_SET.rawValue) && set.ioas_id == 8)
        }
    }

    @Test func missingRequestNamesTheReleaseThatAddedIt() throws {
        let k = iommuKernel()  // no IOMMU_IOAS_MAP_FILE handler: ENOTTY
        try Syscalls.withProvider(k) {
            let ioas = try IOAS(try IOMMUFD())
            let buf = try DMABuffer(length: 4096, backing: .memfd)
            let e = #expect(throws: VFIOError.self) { _ = try ioas.mapFile(buf, at: nil) }
            #expect(e?.operation == .ioctl(.iommuIOASMapFile))
            #expect(e?.hint?.contains("added in Linux 6.13") == true)
        }
    }

    @Test func featureProbeUsesSizeZeroAndIDZero() throws {
        let k = iommuKernel()
        // A "6.2" kernel: the 6.2 requests, none later. Size 0 gets EINVAL; id 0 gets ENOENT.
        for r in [IOMMU_IOAS_ALLOW_IOVAS, IOMMU_IOAS_COPY, IOMMU_IOAS_IOVA_RANGES, IOMMU_IOAS_UNMAP, IOMMU_VFIO_IOAS] {
            k.onIoctl(r) { _, _ in -EINVAL }
        }
        k.onIoctl(IOMMU_DESTROY) { _, _ in -EINVAL }
        k.onIoctl(IOMMU_IOAS_ALLOC) { _, _ in -EINVAL }
        k.onIoctl(IOMMU_IOAS_MAP) { _, a in
            let m = arg(a, iommu_ioas_map.self).pointee
            if m.size == 0 { return -EINVAL }
            return m.ioas_id == 0 ? -ENOENT : 0
        }
        k.onIoctl(IOMMU_OPTION) { _, a in arg(a, iommu_option.self).pointee.size == 0 ? -EINVAL : -EOPNOTSUPP }
        try Syscalls.withProvider(k) {
            let f = try IOMMUFD().features()
            #expect(f.supportedRequests == [.iommuDestroy, .iommuIOASAlloc, .iommuIOASAllowIOVAs, .iommuIOASCopy,
                                            .iommuIOASIOVARanges, .iommuIOASMap, .iommuIOASUnmap,
                                            .iommuOption, .iommuVFIOIOAS])
            #expect(f.missingRequests.first == .iommuHWPTAlloc)
            #expect(f.ioasMapFlags == 7)
            #expect(!f.hugePagesOption)
            let e = #expect(throws: VFIOError.self) { try f.require(.iommuVIOMMUAlloc) }
            #expect(e?.detail?.contains("added in Linux 6.13") == true)
            #expect(f.description.contains("no  IOMMU_HW_QUEUE_ALLOC (since 6.17)"))
        }
        // Nothing but probes: every map probe named IOAS 0.
        #expect(k.calls(IOMMU_IOAS_MAP).allSatisfy { $0.argument(as: iommu_ioas_map.self).ioas_id == 0 })
    }
}

@Suite struct HWPTEncodingTests {
    func kernel() -> FakeKernel {
        let k = iommuKernel()
        k.onIoctl(IOMMU_HWPT_ALLOC) { _, a in arg(a, iommu_hwpt_alloc.self).pointee.out_hwpt_id = 20; return 0 }
        k.onIoctl(IOMMU_FAULT_QUEUE_ALLOC) { [unowned k] _, a in
            let f = arg(a, iommu_fault_alloc.self)
            f.pointee.out_fault_id = 30
            f.pointee.out_fault_fd = UInt32(bitPattern: k.eventfd(0, CVFIO_EFD_CLOEXEC))  // a real fd the fake tracks
            return 0
        }
        return k
    }

    @Test func pagingHWPTWithFlagsAndFaultQueue() throws {
        let k = kernel()
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let q = try FaultQueue(ctx)
            let h = try HWPT(ioas: ioas, device: 3, flags: [.nestParent, .dirtyTracking], faultQueue: q)
            #expect(h.objectID == 20)
            let a = try #require(k.calls(IOMMU_HWPT_ALLOC).first).argument(as: iommu_hwpt_alloc.self)
            #expect(a.dev_id == 3 && a.pt_id == 7 && a.fault_id == 30)
            #expect(a.flags == UInt32(IOMMU_HWPT_ALLOC_NEST_PARENT.rawValue | IOMMU_HWPT_ALLOC_DIRTY_TRACKING.rawValue
                                      | IOMMU_HWPT_FAULT_ID_VALID.rawValue))
            #expect(a.data_type == UInt32(IOMMU_HWPT_DATA_NONE.rawValue) && a.data_len == 0 && a.data_uptr == 0)
            try h.destroy()
            try q.destroy()
        }
    }

    @Test func nestedVTdDataIsTheKernelStruct() throws {
        let k = kernel()
        let data = Mutex<[UInt8]>([])
        k.onIoctl(IOMMU_HWPT_ALLOC) { _, a in
            let h = arg(a, iommu_hwpt_alloc.self)
            h.pointee.out_hwpt_id = 21
            guard let p = UnsafeRawPointer(bitPattern: UInt(h.pointee.data_uptr)) else { return 0 }
            data.withLock { $0 = Array(UnsafeRawBufferPointer(start: p, count: Int(h.pointee.data_len))) }
            return 0
        }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let parent = try HWPT(ioas: ioas, device: 3, flags: .nestParent)
            let s1 = HWPTData.IntelVTdStage1(flags: [.writeProtect], pageTableAddress: 0x1234_5000, addressWidth: 48)
            _ = try HWPT(nestedOn: parent, device: 3, data: .intelVTdStage1(s1))
            let a = try #require(k.calls(IOMMU_HWPT_ALLOC).last).argument(as: iommu_hwpt_alloc.self)
            #expect(a.data_type == UInt32(IOMMU_HWPT_DATA_VTD_S1.rawValue))
            #expect(a.pt_id == 21)
        }
        let bytes = data.withLock { $0 }
        #expect(bytes.count == MemoryLayout<iommu_hwpt_vtd_s1>.size)
        let s = bytes.withUnsafeBytes { $0.loadUnaligned(as: iommu_hwpt_vtd_s1.self) }
        #expect(s.flags == UInt64(IOMMU_VTD_S1_WPE.rawValue) && s.pgtbl_addr == 0x1234_5000 && s.addr_width == 48)
        #expect(HWPTData.armSMMUv3(steWord0: 1, steWord1: 2).encoded.bytes.count == 16)
        #expect(HWPTData.amdGuest(dte: [1, 2, 3, 4]).encoded.bytes.count == 32)
    }

    @Test func invalidateReportsPartialCompletion() throws {
        let k = kernel()
        k.onIoctl(IOMMU_HWPT_INVALIDATE) { _, a in
            let i = arg(a, iommu_hwpt_invalidate.self)
            i.pointee.entry_num = 1
            return -EINVAL
        }
        try Syscalls.withProvider(k) {
            let ctx = try IOMMUFD()
            let h = try HWPT(ioas: try IOAS(ctx), device: 3, flags: .nestParent)
            let e = #expect(throws: VFIOError.self) {
                _ = try h.invalidate([IntelVTdInvalidation(address: 0x1000, pageCount: 1, leafOnly: true), .all, .all])
            }
            #expect(e?.description.contains("handled 1 of 3 entries; entry 1 failed") == true)
            let c = try #require(k.calls(IOMMU_HWPT_INVALIDATE).first).argument(as: iommu_hwpt_invalidate.self)
            #expect(c.hwpt_id == 20 && c.entry_num == 3 && c.data_type == UInt32(IOMMU_HWPT_INVALIDATE_DATA_VTD_S1.rawValue))
            #expect(c.entry_len == UInt32(MemoryLayout<iommu_hwpt_vtd_s1_invalidate>.size))
        }
    }

    @Test func dirtyBitmapZeroesAndDecodes() throws {
        let k = kernel()
        k.onIoctl(IOMMU_HWPT_GET_DIRTY_BITMAP) { _, a in
            let g = arg(a, iommu_hwpt_get_dirty_bitmap.self).pointee
            let words = UnsafeMutablePointer<UInt64>(bitPattern: UInt(g.data))!
            #expect(words[0] == 0 && words[1] == 0)  // zeroed before the call
            words[0] |= 1 << 3
            words[1] |= 1 << 2  // page 66
            return 0
        }
        try Syscalls.withProvider(k) {
            let h = try HWPT(ioas: try IOAS(try IOMMUFD()), device: 3, flags: .dirtyTracking)
            var b = try DirtyBitmap(iova: 0x100000, length: 70 * 4096, pageSize: 4096)
            try h.readDirty(into: &b, clear: false)
            try h.readDirty(into: &b, clear: true)
            #expect(b.dirtyCount == 2)
            let want: [UInt64] = [0x10_3000, 0x14_2000]  // pages 3 and 66
            #expect(b.dirtyIOVAs == want)
            #expect(b.isDirty(iova: 0x14_2064))
            #expect(!b.isDirty(iova: 0x10))
            let calls = k.calls(IOMMU_HWPT_GET_DIRTY_BITMAP).map { $0.argument(as: iommu_hwpt_get_dirty_bitmap.self) }
            #expect(calls.map(\.flags) == [UInt32(IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR.rawValue), 0])
            #expect(calls.allSatisfy { $0.page_size == 4096 && $0.length == 70 * 4096 && $0.iova == 0x100000 })
        }
        #expect(throws: VFIOError.self) { _ = try DirtyBitmap(iova: 0x100, length: 4096, pageSize: 4096) }
        #expect(throws: VFIOError.self) { _ = try DirtyBitmap(iova: 0, length: 4096, pageSize: 3000) }
    }
}

@Suite struct HardwareInfoDecodingTests {
    @Test func intelVTdRegistersDecode() throws {
        let k = iommuKernel()
        // cap: ND=6, CM, SAGAW=0b00100 (48-bit), MGAW=47 (48 bits), FRO=0x22, SLLPS=0b11, PSI, NFR=7, MAMV=0x3f, FS1GP
        let cap: UInt64 = 6 | 1 << 7 | 0b00100 << 8 | 47 << 16 | 0x22 << 24 | 0b11 << 34 | 1 << 39 | 7 << 40
            | 0x3f << 48 | 1 << 56
        // ecap: C, QI, DT, IR, EIM, PT, SC, NEST, PRS, PSS=19 (20 bits), PASID, SMTS, SSADS, SSTS, FSTS
        let ecap: UInt64 = 1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 26 | 1 << 29 | 19 << 35
            | 1 << 40 | 1 << 43 | 1 << 45 | 1 << 46 | 1 << 47
        k.onIoctl(IOMMU_GET_HW_INFO) { _, a in
            let h = arg(a, iommu_hw_info.self)
            var v = iommu_hw_info_vtd()
            v.cap_reg = cap
            v.ecap_reg = ecap
            let dst = UnsafeMutableRawPointer(bitPattern: UInt(h.pointee.data_uptr))!
            withUnsafeBytes(of: v) { dst.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            h.pointee.data_len = UInt32(MemoryLayout<iommu_hw_info_vtd>.size)
            h.pointee.out_data_type = UInt32(IOMMU_HW_INFO_TYPE_INTEL_VTD.rawValue)
            h.pointee.out_capabilities = UInt64(IOMMU_HW_CAP_DIRTY_TRACKING.rawValue)
            h.pointee.out_max_pasid_log2 = 20
            return 0
        }
        let info = try Syscalls.withProvider(k) { try IOMMUFD().hardwareInfo(device: 5) }
        let call = try #require(k.calls(IOMMU_GET_HW_INFO).first).argument(as: iommu_hw_info.self)
        #expect(call.dev_id == 5 && call.flags == 0 && call.data_len == 256)
        #expect(info.capabilities == .dirtyTracking)
        #expect(info.pasidCount == 1 << 20)
        guard case .intelVTd(let v) = info.vendor else { Issue.record("not VT-d: \(info.vendor)"); return }
        #expect(v.domainCount == 65536)
        #expect(v.cachingMode && v.supportedAGAW == 0b00100 && v.maxGuestAddressWidth == 48)
        #expect(v.faultRecordingOffset == 0x220 && v.secondStageLargePages == 3 && v.pageSelectiveInvalidation)
        #expect(v.faultRecordingRegisters == 8 && v.maxAddressMask == 0x3f && v.firstStage1GiBPages)
        #expect(!v.postedInterrupts && !v.requiresWriteBufferFlush)
        #expect(v.coherent && v.queuedInvalidation && v.deviceTLB && v.interruptRemapping && v.extendedInterruptMode)
        #expect(v.passThrough && v.snoopControl && v.nestedTranslation && v.pageRequests)
        #expect(v.pasid && v.pasidBits == 20 && v.scalableMode && v.secondStageAccessedDirty)
        #expect(v.secondStageTranslation && v.firstStageTranslation && !v.executeRequests)
    }

    @Test func otherVendorsDecode() {
        func bytes<T>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
        var smmu = iommu_hw_info_arm_smmuv3()
        smmu.idr.0 = 1 | 1 << 1 | 2 << 2 | 1 << 10 | 1 << 12 | 2 << 27
        smmu.idr.1 = 16 | 20 << 6 | 19 << 21
        smmu.idr.5 = 5 | 1 << 4 | 1 << 6
        let s = IOMMUHardwareInfo(dataType: UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3.rawValue), data: bytes(smmu),
                                  capabilities: 0, maxPASIDLog2: 0)
        guard case .armSMMUv3(let a) = s.vendor else { Issue.record("\(s)"); return }
        #expect(a.stage1 && a.stage2 && a.translationTableFormats == 2 && a.ats && a.asid16)
        #expect(a.streamTableLevels == 2 && a.streamIDBits == 16 && a.substreamIDBits == 20)
        #expect(a.commandQueueLog2Entries == 19 && a.outputAddressBits == 48 && a.granule4K && !a.granule16K && a.granule64K)

        var amd = iommu_hw_info_amd()
        amd.efr = 1 << 1 | 1 << 4 | 1 << 10 | 15 << 32 | 1 << 49 | 1 << 52
        let m = IOMMUHardwareInfo(dataType: UInt32(IOMMU_HW_INFO_TYPE_AMD.rawValue), data: bytes(amd), capabilities: 0,
                                  maxPASIDLog2: 0)
        guard case .amd(let d) = m.vendor else { Issue.record("\(m)"); return }
        #expect(d.pagePeripheralRequests && d.guestTranslation && d.hostTranslationLevels == 5)
        #expect(d.pasidBits == 16 && d.hostDirty && d.hostAccess && !d.x2APIC)

        let t = IOMMUHardwareInfo(dataType: IOMMUHardwareInfo.selftestType, data: [0, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde],
                                  capabilities: 0, maxPASIDLog2: 0)
        #expect(t.vendor == .selftest(flags: 0, testRegister: 0xdead_beef))
        let u = IOMMUHardwareInfo(dataType: 99, data: [1, 2], capabilities: 0, maxPASIDLog2: 0)
        #expect(u.vendor == .unknown(type: 99, data: [1, 2]))
    }
}

@Suite struct VEventParsingTests {
    func record(flags: UInt32, seq: UInt32, payload: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: flags) { Array($0) } + withUnsafeBytes(of: seq) { Array($0) } + payload
    }

    @Test func eventsLostMarkersAndGaps() {
        let lost = UInt32(IOMMU_VEVENTQ_FLAG_LOST_EVENTS.rawValue)
        let bytes = record(flags: 0, seq: 0, payload: [1, 0, 0, 0]) + record(flags: 0, seq: 1, payload: [2, 0, 0, 0])
            + record(flags: lost, seq: 2, payload: []) + record(flags: 0, seq: 3, payload: [3, 0, 0, 0])
            + record(flags: 0, seq: 7, payload: [4, 0, 0, 0]) + [9, 9, 9]  // a torn tail is ignored
        var last: Int64 = -1
        let r = bytes.withUnsafeBytes { VEventQueue.parse($0, eventSize: 4, lastSequence: &last) }
        #expect(r == [.event(sequence: 0, data: [1, 0, 0, 0]), .event(sequence: 1, data: [2, 0, 0, 0]),
                      .lostEvents(sequence: 2), .event(sequence: 3, data: [3, 0, 0, 0]),
                      .lostEvents(sequence: 7), .event(sequence: 7, data: [4, 0, 0, 0])])
        #expect(last == 7)
    }

    @Test func sequenceWrapsAtINT32MAX() {
        var last = Int64(Int32.max)
        let bytes = record(flags: 0, seq: 0, payload: [0, 0, 0, 0])
        let r = bytes.withUnsafeBytes { VEventQueue.parse($0, eventSize: 4, lastSequence: &last) }
        #expect(r == [.event(sequence: 0, data: [0, 0, 0, 0])])
    }
}
