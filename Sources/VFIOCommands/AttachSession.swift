import FoundationEssentials
import VFIOKit

/// Boxes a noncopyable mapping so a list can hold it.
final class MappingBox {
    var mapping: DMAMapping?
    let iova: IOVA
    let length: UInt64
    let backing: MapRequest.Backing
    init(_ m: consuming DMAMapping, backing: MapRequest.Backing) {
        iova = m.iova
        length = m.length
        self.backing = backing
        mapping = consume m
    }
}

/// Boxes a noncopyable BAR mapping (`--map-bar`) so a list can hold it.
final class BARMappingBox {
    var mapping: BARMapping?
    let iova: IOVA
    let length: UInt64
    let request: BARMapRequest
    init(_ m: consuming BARMapping, request: BARMapRequest) {
        iova = m.iova
        length = m.length
        self.request = request
        mapping = consume m
    }
}

/// The objects of one `vfioctl attach`, created in order and released in the
/// kernel's order. The iommufd path opens its objects one by one (an
/// inherited iommufd, an existing IOAS, a HWPT, devices handed over unbound
/// are beyond the front door); the container path is a `DMASpace` with the
/// devices opened in it through the front door, and its allocator places the
/// maps without an IOVA.
final class AttachSession {
    let plan: AttachPlan
    let host: PCIHost
    let inheritedIOMMUFD: Int32?

    struct Device {
        var address: VFIODeviceName
        var cdev: String?
        var device: VFIODevice
        var deviceID: UInt32?
        var attachedID: UInt32?
        var hwInfo: IOMMUHardwareInfo?
    }

    var iommufd: IOMMUFD?
    var ioas: IOAS?
    var hwpt: HWPT?
    /// The container path's address space.
    var space: DMASpace?
    var devices: [Device] = []
    var mappings: [MappingBox] = []
    var barMappings: [BARMappingBox] = []
    /// Devices opened (and bound, not attached) only to export a BAR for --map-bar.
    var exporters: [VFIODevice] = []

    init(plan: AttachPlan, host: PCIHost, inheritedIOMMUFD: Int32?) {
        self.plan = plan
        self.host = host
        self.inheritedIOMMUFD = inheritedIOMMUFD
    }

    var vfioContainer: VFIOContainer? { space?.container }
    var groups: [VFIOGroup] { space?.addedGroups ?? [] }

    func setUp() throws(VFIOError) {
        if plan.container { try setUpContainer() } else { try setUpIOMMUFD() }
    }

    func setUpIOMMUFD() throws(VFIOError) {
        // Find every node before opening anything: a bad BDF changes nothing.
        var cdevs: [String] = []
        for a in plan.addresses { cdevs.append(try VFIODevice.cdevPath(of: a, host: host)) }
        let ctx: IOMMUFD
        if let fd = inheritedIOMMUFD {
            ctx = IOMMUFD(adopting: try Launcher.adoptInherited(fd), label: "iommufd (inherited fd \(fd))")
        } else {
            do throws(VFIOError) { ctx = try IOMMUFD() } catch { throw host.explainAccess(error) }
        }
        iommufd = ctx
        for (a, cdev) in zip(plan.addresses, cdevs) {
            devices.append(Device(address: a, cdev: cdev, device: try VFIODevice.open(a, host: host)))
        }
        if plan.bind {
            for i in devices.indices {
                let token = vfToken(for: devices[i].address)
                do throws(VFIOError) {
                    devices[i].deviceID = try devices[i].device.bind(to: ctx, token: token)
                } catch {
                    guard let a = devices[i].address.pciAddress else { throw error }
                    let explained = host.explainVFToken(error, device: a, tokenGiven: token != nil)
                    if explained.detail != error.detail { throw vfTokenHint(explained, device: a) }
                    throw host.explainOwnership(error, device: a)
                }
            }
        }
        switch plan.ioas {
        case .new: ioas = try IOAS(ctx)
        case .existing(let id): ioas = try IOAS(existing: id, in: ctx)
        }
        guard let ioas else { return }
        if let req = plan.hwpt, let first = devices.first?.deviceID {
            hwpt = try HWPT(ioas: ioas, device: first, flags: req.flags)
        }
        if plan.bind {
            let target: any IOMMUAttachTarget = hwpt ?? ioas
            for i in devices.indices {
                devices[i].attachedID = try devices[i].device.attach(to: target)
                if let id = devices[i].deviceID { devices[i].hwInfo = try? ctx.hardwareInfo(device: id) }
            }
        }
        if !plan.maps.isEmpty {
            let ranges = try ioas.iovaRanges()
            // Fixed IOVAs first, so a kernel-chosen one cannot take their place.
            for m in AttachSession.fixedFirst(plan.maps) {
                let iova = m.iova
                if let iova { try AttachSession.check(m, iova: iova, in: ranges) }
                let buffer = try DMABuffer(length: Int(m.size), backing: m.backing.dmaBacking)
                if m.backing == .memfd {
                    mappings.append(MappingBox(try ioas.mapFile(buffer, at: iova), backing: m.backing))
                } else {
                    mappings.append(MappingBox(try ioas.map(buffer, at: iova), backing: m.backing))
                }
            }
        }
        if !plan.barMaps.isEmpty { try mapBARs(ctx, ioas) }
    }

    /// `--map-bar`: each BAR range exported as a dma-buf and mapped into the
    /// IOAS, fixed IOVAs first; a device not attached here is opened and bound
    /// only to export.
    func mapBARs(_ ctx: IOMMUFD, _ ioas: IOAS) throws(VFIOError) {
        let ranges = try ioas.iovaRanges()
        let ordered = plan.barMaps.filter { $0.iova != nil } + plan.barMaps.filter { $0.iova == nil }
        for m in ordered {
            if let iova = m.iova { try AttachSession.check(MapRequest(size: m.size, iova: iova), iova: iova, in: ranges) }
            let exporter: VFIODevice
            if let d = devices.first(where: { $0.address == .pci(m.device) }) {
                exporter = d.device
            } else if let d = exporters.first(where: { (try? VFIODevice.cdevPath(of: m.device, host: host)) == $0.label }) {
                exporter = d
            } else {
                let d = try VFIODevice.open(m.device, host: host)
                exporters.append(d)
                do throws(VFIOError) {
                    try d.bind(to: ctx)
                } catch {
                    throw host.explainOwnership(error, device: m.device)
                }
                exporter = d
            }
            let buf = try exporter.exportDMABuf(bar: m.bar, offset: m.offset, length: m.size)
            let mapping = try ioas.map(buf, at: m.iova)
            try buf.close()  // the mapping holds the kernel's own reference
            barMappings.append(BARMappingBox(mapping, request: m))
        }
    }

    func setUpContainer() throws(VFIOError) {
        // Check every device before opening anything: a bad BDF changes nothing.
        for a in plan.addresses {
            switch a {
            case .pci(let p): _ = try host.vfioDevice(p)
            case .mdev(let u): _ = try VFIOGroup.groupNumber(ofMdev: u, host: host)
            }
        }
        let space: DMASpace
        do throws(VFIOError) {
            space = try DMASpace(mode: PathOptions.mode(container: true), dmaMask: .max)
        } catch {
            throw host.explainAccess(error)
        }
        self.space = space
        for a in plan.addresses {
            let token = vfToken(for: a)
            let d: AttachedDevice
            do throws(VFIOError) {
                d = try AttachedDevice.open(a, in: space, vfToken: token, host: host)
            } catch {
                guard let p = a.pciAddress else { throw error }
                throw vfTokenHint(error, device: p)
            }
            devices.append(Device(address: a, cdev: nil, device: d.device))
        }
        // Fixed IOVAs first, so the allocator cannot hand their place to another map.
        for m in AttachSession.fixedFirst(plan.maps) {
            let buffer = try DMABuffer(length: Int(m.size), backing: m.backing.dmaBacking)
            mappings.append(MappingBox(try space.map(buffer, at: m.iova), backing: m.backing))
        }
    }

    /// `--vf-token` goes to the SR-IOV VFs and PFs named (the kernel refuses a
    /// token for any other device, EINVAL).
    func vfToken(for name: VFIODeviceName) -> UUID? {
        guard let token = plan.vfToken, let a = name.pciAddress, host.takesVFToken(a) else { return nil }
        return token
    }

    /// A refusal by the VF token rules (as `PCIHost.explainVFToken` words it)
    /// with vfioctl's fix: for a VF, the commands that, run as printed, set a
    /// new token on its PF (as the PF's user) and attach with it. Other errors
    /// come back unchanged.
    func vfTokenHint(_ error: VFIOError, device a: PCIAddress) -> VFIOError {
        guard error.errno == .permissionDenied,
              error.operation == .ioctl(.vfioDeviceBindIOMMUFD) || error.operation == .ioctl(.vfioGroupGetDeviceFD)
        else { return error }
        var e = error
        if let pf = host.physicalFunction(of: a) {
            let fresh = UUID().uuidString.lowercased()
            let again = (["vfioctl attach"] + plan.addresses.map(\.description) + (plan.container ? ["--container"] : [])
                         + ["--vf-token", fresh]).joined(separator: " ")
            e.remedies = [.advice("present the VF token its PF's user set, with --vf-token UUID; or, as the user of \(pf), "
                                  + "set a new one and present it: run `vfioctl bind \(pf) --vf-token \(fresh)`, then `\(again)` "
                                  + "(setting it is refused while another process has a VF of \(pf) open)")]
        } else if (try? host.sriov(of: a)) != nil {
            e.remedies = [.advice("present the VF token its VFs were opened with, with --vf-token UUID, or close the VFs first "
                                  + "(`vfioctl list` shows who holds them)")]
        }
        return e
    }

    static func fixedFirst(_ maps: [MapRequest]) -> [MapRequest] {
        maps.filter { $0.iova != nil } + maps.filter { $0.iova == nil }
    }

    /// A fixed `--map` IOVA on an IOAS: aligned, and inside one usable range.
    static func check(_ m: MapRequest, iova: IOVA, in r: IOAS.IOVARanges) throws(VFIOError) {
        if r.alignment > 0, !iova.isAligned(to: r.alignment) || m.size % r.alignment != 0 {
            throw VFIOError.invalid(.step("map \(m)"), "IOVA \(iova) and size \(m.size) must be multiples of the "
                                    + "IOVA alignment, \(formatBytes(r.alignment))",
                                    remedies: [.advice("pick an aligned IOVA, or leave @IOVA out")])
        }
        guard r.contains(iova: iova, length: m.size) else {
            let last = iova.adding(m.size - 1).map(\.description) ?? "past 2^64"
            throw VFIOError.invalid(.step("map \(m)"), "\(iova)-\(last) is not inside one usable IOVA range ("
                                    + AttachReport.rangesText(r.ranges) + ")",
                                    remedies: [.advice("the ranges exclude reserved regions (MSI window, apertures): pick an "
                                                       + "IOVA inside one")])
        }
    }

    // MARK: release

    /// Releases in the kernel's order, reporting the first error: detach every
    /// device, unmap, close the devices, destroy the HWPT and the IOAS (when
    /// created here), close the groups, the container, the iommufd.
    func release() throws(VFIOError) {
        var first: VFIOError?
        func step(_ body: () throws(VFIOError) -> Void) {
            do { try body() } catch { if first == nil { first = error } }
        }
        for d in devices where d.attachedID != nil && !d.device.isClosed {
            step { () throws(VFIOError) in try d.device.detach() }
        }
        for box in mappings {
            guard let m = box.mapping.take() else { continue }
            do { try m.unmap() } catch { if first == nil { first = error } }
        }
        mappings = []
        for box in barMappings {
            guard let m = box.mapping.take() else { continue }
            do { try m.unmap() } catch { if first == nil { first = error } }
        }
        barMappings = []
        for d in devices { step { () throws(VFIOError) in try d.device.close() } }
        devices = []
        for d in exporters { step { () throws(VFIOError) in try d.close() } }
        exporters = []
        if let hwpt { step { () throws(VFIOError) in try hwpt.destroy() } }
        hwpt = nil
        if let ioas, ioas.isOwned { step { () throws(VFIOError) in try ioas.destroy() } }
        ioas = nil
        for g in groups { step { () throws(VFIOError) in try g.close() } }
        if let c = vfioContainer { step { () throws(VFIOError) in try c.close() } }
        space = nil
        if let iommufd { step { () throws(VFIOError) in try iommufd.close() } }
        iommufd = nil
        if let first { throw first }
    }

    /// Releases what exists after a failure; the first failure is what the user sees.
    func releaseQuietly() { try? release() }
}
