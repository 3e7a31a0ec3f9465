import CVFIO
import Synchronization
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A small model of the kernel's iommufd behind a ``FakeKernel``, for the
/// tests of object lifetimes: object ids come from the lowest free number and
/// are reused at once, as the kernel's xarray hands them out
/// (`xa_alloc(..., xa_limit_31b)`); an IOAS holds areas (whole-area unmap,
/// ENOENT for nothing or a split, EEXIST for overlaps, unmap-all); objects
/// built on others keep them busy (EBUSY on destroy). Requests naming an id
/// that does not exist fail with ENOENT, like the kernel's `iommufd_get_object`.
final class IOMMUModel: Sendable {
    struct Area: Equatable, Sendable {
        var iova: UInt64
        var length: UInt64
        var last: UInt64 { iova + (length - 1) }
    }

    enum Kind: String, Sendable { case ioas, hwpt, fault, viommu, vdevice, veventq, hwQueue }

    struct Object: Sendable {
        var kind: Kind
        /// The objects this one is built on (each held busy while this one lives).
        var uses: [UInt32] = []
        var areas: [Area] = []
        /// The object's own fd (fault queue, vEVENTQ): it holds the object busy while open.
        var fd: Int32?
    }

    struct State: Sendable {
        var objects: [UInt32: Object] = [:]
        /// Areas pinned (EBUSY on unmap), by IOAS: as an access or a HW queue pins them.
        var pinned: [UInt32: [UInt64]] = [:]
    }

    let state = Mutex(State())
    let kernel: FakeKernel

    init() {
        kernel = FakeKernel()
        kernel.files["/dev/iommu"] = .node
        install()
    }

    // MARK: inspection

    /// The ids that exist now, sorted.
    var ids: [UInt32] { state.withLock { $0.objects.keys.sorted() } }

    /// The areas of IOAS `id` (nil when there is no such IOAS).
    func areas(_ id: UInt32) -> [Area]? {
        state.withLock { s in s.objects[id].flatMap { $0.kind == .ioas ? $0.areas.sorted { $0.iova < $1.iova } : nil } }
    }

    func kind(_ id: UInt32) -> Kind? { state.withLock { $0.objects[id]?.kind } }

    /// Makes unmaps of the area at `iova` in IOAS `ioas` fail with EBUSY.
    func pin(ioas: UInt32, iova: UInt64) { state.withLock { $0.pinned[ioas, default: []].append(iova) } }
    func unpinAll() { state.withLock { $0.pinned = [:] } }

    // MARK: the model

    private static func lowestFreeID(_ s: State) -> UInt32 {
        var id: UInt32 = 1
        while s.objects[id] != nil { id += 1 }
        return id
    }

    private func add(_ object: Object) -> UInt32 {
        state.withLock { s in
            let id = IOMMUModel.lowestFreeID(s)
            s.objects[id] = object
            return id
        }
    }

    private func exists(_ id: UInt32, _ kinds: Kind...) -> Bool {
        state.withLock { s in s.objects[id].map { kinds.isEmpty || kinds.contains($0.kind) } ?? false }
    }

    /// IOMMU_IOAS_MAP and IOMMU_IOAS_MAP_FILE: a new area (EEXIST on overlap,
    /// kernel-chosen IOVAs from 1 MiB up), its IOVA written back.
    private func mapArea(ioas: UInt32, flags: UInt32, length: UInt64, iova io: inout UInt64) -> Int32 {
        let fixed = flags & UInt32(IOMMU_IOAS_MAP_FIXED_IOVA.rawValue) != 0
        guard length > 0, length % 4096 == 0 else { return -EINVAL }
        return state.withLock { s in
            guard var o = s.objects[ioas], o.kind == .ioas else { return -ENOENT }
            var iova = io
            if fixed {
                guard iova % 4096 == 0 else { return -EINVAL }
                guard iova <= UInt64.max - (length - 1) else { return -EOVERFLOW }
                let new = Area(iova: iova, length: length)
                if o.areas.contains(where: { $0.iova <= new.last && new.iova <= $0.last }) { return -EEXIST }
            } else {
                iova = 0x10_0000
                while let clash = o.areas.first(where: { $0.iova <= iova + (length - 1) && iova <= $0.last }) {
                    iova = clash.last + 1
                }
                io = iova
            }
            o.areas.append(Area(iova: iova, length: length))
            s.objects[ioas] = o
            return 0
        }
    }

    private func install() {
        let k = kernel
        k.onIoctl(IOMMU_IOAS_ALLOC) { [self] _, a in
            arg(a, iommu_ioas_alloc.self).pointee.out_ioas_id = add(Object(kind: .ioas))
            return 0
        }
        k.onIoctl(IOMMU_DESTROY) { [self, unowned k] _, a in
            let id = arg(a, iommu_destroy.self).pointee.id
            return state.withLock { s in
                guard let o = s.objects[id] else { return -ENOENT }
                // An open queue fd holds the object (the kernel's eventq file takes a users reference).
                // Open in this kernel: the number alone may be another test's file by now.
                if let fd = o.fd, k.isOpen(fd) { return -EBUSY }
                if s.objects.values.contains(where: { $0.uses.contains(id) }) { return -EBUSY }
                s.objects[id] = nil
                s.pinned[id] = nil
                return 0
            }
        }
        k.onIoctl(IOMMU_IOAS_MAP) { [self] _, a in
            let m = arg(a, iommu_ioas_map.self)
            return mapArea(ioas: m.pointee.ioas_id, flags: m.pointee.flags, length: m.pointee.length, iova: &m.pointee.iova)
        }
        // A file (memfd or dma-buf) maps like memory; the fd must be open in the fake kernel.
        k.onIoctl(IOMMU_IOAS_MAP_FILE) { [self] _, a in
            let m = arg(a, iommu_ioas_map_file.self)
            guard kernel.isOpen(m.pointee.fd) else { return -EBADF }
            return mapArea(ioas: m.pointee.ioas_id, flags: m.pointee.flags, length: m.pointee.length, iova: &m.pointee.iova)
        }
        k.onIoctl(IOMMU_IOAS_UNMAP) { [self] _, a in
            let u = arg(a, iommu_ioas_unmap.self)
            let start = u.pointee.iova, length = u.pointee.length
            let all = start == 0 && length == UInt64.max
            guard length > 0 else { return -EINVAL }
            guard all || start <= UInt64.max - (length - 1) else { return -EOVERFLOW }
            let last = all ? UInt64.max : start + (length - 1)
            return state.withLock { s in
                guard var o = s.objects[u.pointee.ioas_id], o.kind == .ioas else { return -ENOENT }
                let pins = s.pinned[u.pointee.ioas_id] ?? []
                var unmapped: UInt64 = 0
                // In IOVA order, stopping at the first area that cannot go (as iopt_unmap_iova_range does).
                for area in o.areas.sorted(by: { $0.iova < $1.iova }) where area.iova <= last && start <= area.last {
                    if area.iova < start || area.last > last {
                        s.objects[u.pointee.ioas_id] = o
                        return -ENOENT
                    }
                    if pins.contains(area.iova) {
                        s.objects[u.pointee.ioas_id] = o
                        return -EBUSY
                    }
                    o.areas.removeAll { $0 == area }
                    unmapped += area.length
                }
                s.objects[u.pointee.ioas_id] = o
                if unmapped == 0 && !all { return -ENOENT }
                u.pointee.length = unmapped
                return 0
            }
        }
        k.onIoctl(IOMMU_IOAS_IOVA_RANGES) { [self] _, a in
            let r = arg(a, iommu_ioas_iova_ranges.self)
            guard exists(r.pointee.ioas_id, .ioas) else { return -ENOENT }
            if r.pointee.num_iovas >= 1, let out = UnsafeMutablePointer<iommu_iova_range>(bitPattern: UInt(r.pointee.allowed_iovas)) {
                out[0] = iommu_iova_range(start: 0, last: UInt64.max)
            }
            r.pointee.num_iovas = 1
            r.pointee.out_iova_alignment = 4096
            return 0
        }
        k.onIoctl(IOMMU_IOAS_ALLOW_IOVAS) { [self] _, a in exists(arg(a, iommu_ioas_allow_iovas.self).pointee.ioas_id, .ioas) ? 0 : -ENOENT }
        k.onIoctl(IOMMU_IOAS_COPY) { [self] _, a in
            let c = arg(a, iommu_ioas_copy.self).pointee
            return exists(c.src_ioas_id, .ioas) && exists(c.dst_ioas_id, .ioas) ? 0 : -ENOENT
        }
        k.onIoctl(IOMMU_OPTION) { [self] _, a in
            let o = arg(a, iommu_option.self)
            guard o.pointee.object_id == 0 || exists(o.pointee.object_id) else { return -ENOENT }
            o.pointee.val64 = 1
            return 0
        }
        k.onIoctl(IOMMU_VFIO_IOAS) { [self] _, a in
            let v = arg(a, iommu_vfio_ioas.self).pointee
            return v.op == UInt16(IOMMU_VFIO_IOAS_SET.rawValue) && !exists(v.ioas_id, .ioas) ? -ENOENT : 0
        }
        k.onIoctl(IOMMU_HWPT_ALLOC) { [self] _, a in
            let h = arg(a, iommu_hwpt_alloc.self)
            guard exists(h.pointee.pt_id, .ioas, .hwpt, .viommu) else { return -ENOENT }
            var uses = [h.pointee.pt_id]
            if h.pointee.flags & UInt32(IOMMU_HWPT_FAULT_ID_VALID.rawValue) != 0 {
                guard exists(h.pointee.fault_id, .fault) else { return -ENOENT }
                uses.append(h.pointee.fault_id)
            }
            h.pointee.out_hwpt_id = add(Object(kind: .hwpt, uses: uses))
            return 0
        }
        for r in [IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP] {
            k.onIoctl(r) { [self] _, a in
                // hwpt_id follows size and flags in both structs.
                exists(a!.load(fromByteOffset: 8, as: UInt32.self), .hwpt) ? 0 : -ENOENT
            }
        }
        k.onIoctl(IOMMU_HWPT_INVALIDATE) { [self] _, a in
            let i = arg(a, iommu_hwpt_invalidate.self)
            guard exists(i.pointee.hwpt_id, .hwpt, .viommu) else { i.pointee.entry_num = 0; return -ENOENT }
            return 0
        }
        k.onIoctl(IOMMU_FAULT_QUEUE_ALLOC) { [self, unowned k] _, a in
            let f = arg(a, iommu_fault_alloc.self)
            let fd = k.eventfd(0, CVFIO_EFD_CLOEXEC)
            f.pointee.out_fault_id = add(Object(kind: .fault, fd: fd))
            f.pointee.out_fault_fd = UInt32(bitPattern: fd)
            return 0
        }
        k.onIoctl(IOMMU_VIOMMU_ALLOC) { [self] _, a in
            let v = arg(a, iommu_viommu_alloc.self)
            guard exists(v.pointee.hwpt_id, .hwpt) else { return -ENOENT }
            v.pointee.out_viommu_id = add(Object(kind: .viommu, uses: [v.pointee.hwpt_id]))
            return 0
        }
        k.onIoctl(IOMMU_VDEVICE_ALLOC) { [self] _, a in
            let v = arg(a, iommu_vdevice_alloc.self)
            guard exists(v.pointee.viommu_id, .viommu) else { return -ENOENT }
            v.pointee.out_vdevice_id = add(Object(kind: .vdevice, uses: [v.pointee.viommu_id]))
            return 0
        }
        k.onIoctl(IOMMU_VEVENTQ_ALLOC) { [self, unowned k] _, a in
            let v = arg(a, iommu_veventq_alloc.self)
            guard exists(v.pointee.viommu_id, .viommu) else { return -ENOENT }
            let fd = k.eventfd(0, CVFIO_EFD_CLOEXEC)
            v.pointee.out_veventq_id = add(Object(kind: .veventq, uses: [v.pointee.viommu_id], fd: fd))
            v.pointee.out_veventq_fd = UInt32(bitPattern: fd)
            return 0
        }
        k.onIoctl(IOMMU_HW_QUEUE_ALLOC) { [self] _, a in
            let q = arg(a, iommu_hw_queue_alloc.self)
            guard exists(q.pointee.viommu_id, .viommu) else { return -ENOENT }
            q.pointee.out_hw_queue_id = add(Object(kind: .hwQueue, uses: [q.pointee.viommu_id]))
            return 0
        }
    }
}
