import SystemPackage

// The openers that start from a PCI address: they find the device's cdev or
// group in sysfs (the host side) and open the kernel object (the objects
// layer), and their errors name what the host knows: the members that keep a
// group from VFIO, the processes that hold it. The objects layer itself opens
// by cdev path and group number only (`VFIODevice.open(cdev:)`, `VFIOGroup(number:)`).

extension VFIODevice {
    /// The cdev path of a PCI function bound to vfio-pci, from
    /// `/sys/bus/pci/devices/BDF/vfio-dev/vfioN`.
    public static func cdevPath(bdf: String, host: PCIHost = PCIHost()) throws(VFIOError) -> String {
        let device = try host.device(try PCIAddress(parsing: bdf))
        guard let name = device.vfioCdev else {
            throw VFIOError.invalid(.step(.findVFIOCdev), "\(bdf) has no VFIO cdev (bound to \(device.driver ?? "no driver"))",
                                    object: bdf,
                                    remedies: [.bindToVFIO(device.address),
                                               .kernelConfig(["CONFIG_VFIO_DEVICE_CDEV"], since: KernelVersion(6, 6))])
        }
        return "/dev/vfio/devices/\(name)"
    }

    /// Opens the cdev of a PCI function bound to vfio-pci, by BDF.
    public static func open(bdf: String, host: PCIHost = PCIHost()) throws(VFIOError) -> VFIODevice {
        try open(cdev: try cdevPath(bdf: bdf, host: host))
    }
}

extension VFIOGroup {
    /// The IOMMU group number of a PCI device.
    public static func groupNumber(of bdf: String, host: PCIHost = PCIHost()) throws(VFIOError) -> Int {
        try groupNumber(of: try PCIAddress(parsing: bdf), host: host)
    }

    /// The IOMMU group number of a PCI device.
    public static func groupNumber(of address: PCIAddress, host: PCIHost = PCIHost()) throws(VFIOError) -> Int {
        guard let n = try host.device(address).iommuGroup else { throw host.noGroupError(address) }
        return n
    }

    static func blockedError(_ op: VFIOError.Operation, _ v: GroupViability, _ blocking: [GroupViability.Member],
                             errno: Errno? = nil) -> VFIOError {
        let names = blocking.map { m in
            m.status == .unbound ? "\(m.address) (no driver; VFIOKit wants every endpoint on vfio-pci)" : m.blockingText
        }.joined(separator: ", ")
        let remedies: [Remedy]
        if let bad = blocking.first(where: { $0.status == .unreadable }) {
            remedies = [.inspect(path: "/sys/bus/pci/devices/\(bad.address)/"),
                        .advice("VFIOKit does not use a group it cannot check")]
        } else {
            let first = v.members.first { !$0.isBridge }?.address ?? v.members[0].address
            var steps = v.fixes(for: first, requireVFIO: true)
            if steps.isEmpty { steps = [.bindGroup(first)] }
            remedies = steps + [.advice("every endpoint of a group on vfio-pci; a bridge on pci-stub or a driver that "
                                        + "manages DMA")]
        }
        return VFIOError(operation: op, errno: errno, object: "/dev/vfio/\(v.group)",
                         detail: "IOMMU group \(v.group) is not usable: \(names)", remedies: remedies)
    }

    /// Opens `/dev/vfio/N` and checks that the group is viable, naming the
    /// members in the way (from sysfs, through `host`). With
    /// `requireAllMembersBound` (the default) VFIOKit also refuses a group
    /// with a member not bound to vfio-pci (bridges excepted), naming it.
    /// An open refused because another process holds the group names it.
    public convenience init(number: Int, host: PCIHost, requireAllMembersBound: Bool = true) throws(VFIOError) {
        let path = "/dev/vfio/\(number)"
        let fd: OwnedFD
        do {
            fd = try OwnedFD.open(path)
        } catch {
            // No node yet: say which members keep the group from VFIO.
            if error.errno == .noSuchFileOrDirectory, let v = try? host.viability(ofGroup: number),
               case let blocking = v.blockers(requireVFIO: true), !blocking.isEmpty {
                throw VFIOGroup.blockedError(.syscall(.open), v, blocking, errno: error.errno)
            }
            // EBUSY: held by another process or through a member's cdev: say by whom.
            throw host.explainOwnership(error, device: nil, group: number)
        }
        self.init(fd: fd, number: number)
        let s = try status()
        // The kernel's flag decides; sysfs names the members and adds VFIOKit's
        // stricter every-member-on-vfio-pci rule. A group whose members cannot
        // be read is refused under that rule (fail closed).
        let v: GroupViability?
        do throws(VFIOError) {
            v = try host.viability(ofGroup: number)
        } catch {
            if requireAllMembersBound {
                var e = error
                e.detail = (e.detail.map { $0 + "; " } ?? "") + "VFIOKit cannot check the members of IOMMU group \(number), so it does not use it"
                throw e
            }
            v = nil
        }
        if !s.viable {
            guard let v else {
                throw VFIOError.invalid(.ioctl(.vfioGroupGetStatus), "IOMMU group \(number) is not viable", object: label,
                                        remedies: [.bindGroup(nil)])
            }
            throw VFIOGroup.blockedError(.ioctl(.vfioGroupGetStatus), v, v.blockers(requireVFIO: false))
        }
        if requireAllMembersBound, let v, case let blocking = v.blockers(requireVFIO: true), !blocking.isEmpty {
            throw VFIOGroup.blockedError(.step(.openGroup), v, blocking)
        }
    }

    /// Opens the group of a PCI device, checked as ``init(number:host:requireAllMembersBound:)`` does.
    public convenience init(bdf: String, host: PCIHost = PCIHost(), requireAllMembersBound: Bool = true) throws(VFIOError) {
        try self.init(number: try VFIOGroup.groupNumber(of: bdf, host: host), host: host,
                      requireAllMembersBound: requireAllMembersBound)
    }
}

extension DMASpace {
    /// Opens a device bound to vfio-pci and puts it in this address space: for
    /// containers, opens its group (refusing a group with members not bound to
    /// vfio-pci) and adds it (``add(_:)``: the IOMMU type is set on first use);
    /// for iommufd, opens the cdev, binds and attaches it to the IOAS
    /// (``attach(_:)``). Errors that come from the group's ownership (held by
    /// another process or context, MSI isolation) name the holder:
    /// ``PCIHost/explainOwnership(_:device:group:)``.
    public func openDevice(bdf: String, requireAllGroupMembersBound: Bool = true) throws(VFIOError) -> VFIODevice {
        let host = PCIHost.system
        do throws(VFIOError) {
            if container != nil {
                let group = try self.group(for: bdf, requireAllMembersBound: requireAllGroupMembersBound)
                return try group.device(bdf)
            }
            let device = try VFIODevice.open(bdf: bdf, host: host)
            try attach(device)
            return device
        } catch {
            throw host.explainOwnership(error, device: try? PCIAddress(parsing: bdf))
        }
    }

    /// The group of `bdf`, opened (checked as `VFIOGroup(number:host:)` does)
    /// and added to the container on first use.
    public func group(for bdf: String, requireAllMembersBound: Bool = true) throws(VFIOError) -> VFIOGroup {
        guard container != nil else {
            throw VFIOError.invalid(.step(.openGroup), "DMA space (\(mode)) uses cdevs, not groups", object: bdf)
        }
        let host = PCIHost.system
        let n = try VFIOGroup.groupNumber(of: bdf, host: host)
        if let g = group(number: n) { return g }
        return try add(try VFIOGroup(number: n, host: host, requireAllMembersBound: requireAllMembersBound))
    }
}
