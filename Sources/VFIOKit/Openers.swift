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
            throw VFIOError.invalid("find VFIO cdev", "\(bdf) has no VFIO cdev (bound to \(device.driver ?? "no driver"))",
                                    object: bdf,
                                    hint: "bind it to vfio-pci (`vfioctl bind \(bdf)`); cdevs need "
                                        + "CONFIG_VFIO_DEVICE_CDEV (Linux 6.6 or later)")
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

    static func blockedError(_ op: String, _ v: GroupViability, _ blocking: [GroupViability.Member], errno: Errno? = nil) -> VFIOError {
        let names = blocking.map { m in
            m.status == .unbound ? "\(m.address) (no driver; VFIOKit wants every endpoint on vfio-pci)" : m.blockingText
        }.joined(separator: ", ")
        let hint: String
        if let bad = blocking.first(where: { $0.status == .unreadable }) {
            hint = "find out why \(bad.address) cannot be read (`ls -l /sys/bus/pci/devices/\(bad.address)/`); "
                + "VFIOKit does not use a group it cannot check"
        } else {
            let first = v.members.first { !$0.isBridge }?.address ?? v.members[0].address
            var cmds = v.fixCommands(for: first, requireVFIO: true)
            if cmds.isEmpty { cmds = ["vfioctl bind \(first) --group"] }
            hint = "run " + cmds.map { "`\($0)`" }.joined(separator: ", then ")
                + " (every endpoint of a group on vfio-pci; a bridge on pci-stub or a driver that manages DMA)"
        }
        return VFIOError(operation: op, errno: errno, object: "/dev/vfio/\(v.group)",
                         detail: "IOMMU group \(v.group) is not usable: \(names)", hint: hint)
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
            if error.errno?.rawValue == 2, let v = try? host.viability(ofGroup: number),
               case let blocking = v.blockers(requireVFIO: true), !blocking.isEmpty {
                throw VFIOGroup.blockedError("open", v, blocking, errno: error.errno)
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
                throw VFIOError.invalid("VFIO_GROUP_GET_STATUS", "IOMMU group \(number) is not viable", object: label,
                                        hint: "bind every member of the group to vfio-pci (`vfioctl list --groups`)")
            }
            throw VFIOGroup.blockedError("VFIO_GROUP_GET_STATUS", v, v.blockers(requireVFIO: false))
        }
        if requireAllMembersBound, let v, case let blocking = v.blockers(requireVFIO: true), !blocking.isEmpty {
            throw VFIOGroup.blockedError("open group", v, blocking)
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
            throw VFIOError.invalid("open group", "DMA space (\(mode)) uses cdevs, not groups", object: bdf)
        }
        let host = PCIHost.system
        let n = try VFIOGroup.groupNumber(of: bdf, host: host)
        if let g = group(number: n) { return g }
        return try add(try VFIOGroup(number: n, host: host, requireAllMembersBound: requireAllMembersBound))
    }
}
