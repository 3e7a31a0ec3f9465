import SystemPackage

// The openers that start from a PCI address: they find the device's cdev or
// group in sysfs (the host side) and open the kernel object (the objects
// layer), and their errors name what the host knows: the members that keep a
// group from VFIO, the processes that hold it. The objects layer itself opens
// by cdev path and group number only (`VFIODevice.open(cdev:)`, `VFIOGroup(number:)`).

extension VFIODevice {
    /// The cdev path of a PCI function on vfio-pci, from
    /// `/sys/bus/pci/devices/BDF/vfio-dev/vfioN`. The error says when the
    /// device does not exist, which driver has it instead, or that it has no cdev.
    public static func cdevPath(of address: PCIAddress, host: PCIHost = .system) throws(VFIOError) -> String {
        let device = try host.vfioDevice(address)
        guard let path = device.vfioCdevPath else {
            throw VFIOError.invalid(.step(.findVFIOCdev), "\(address) has no VFIO cdev (bound to \(device.driver ?? "no driver"))",
                                    object: address.description,
                                    remedies: [.bindToVFIO(address),
                                               .kernelConfig(["CONFIG_VFIO_DEVICE_CDEV"], since: KernelVersion(6, 6))])
        }
        return path
    }

    /// Opens the cdev of a PCI function on vfio-pci (not bound to an iommufd
    /// yet: ``bind(to:token:)``). Lower level than ``AttachedDevice``, which
    /// also binds and attaches. A refused open says who holds the device or
    /// lacks permission on the node.
    public static func open(_ address: PCIAddress, host: PCIHost = .system) throws(VFIOError) -> VFIODevice {
        let path = try cdevPath(of: address, host: host)
        do throws(VFIOError) {
            return try open(cdev: path)
        } catch {
            throw host.explainOwnership(host.explainAccess(error), device: address)
        }
    }
}

extension VFIOGroup {
    /// The IOMMU group number of a PCI device.
    public static func groupNumber(of address: PCIAddress, host: PCIHost = .system) throws(VFIOError) -> Int {
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
            throw host.explainOwnership(host.explainAccess(error), device: nil, group: number)
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
    public convenience init(of address: PCIAddress, host: PCIHost = .system, requireAllMembersBound: Bool = true)
        throws(VFIOError)
    {
        try self.init(number: try VFIOGroup.groupNumber(of: address, host: host), host: host,
                      requireAllMembersBound: requireAllMembersBound)
    }
}

extension DMASpace {
    /// Opens a device on vfio-pci and puts it in this address space: for
    /// containers, opens its group (refusing a group with members not bound to
    /// vfio-pci), adds it (``add(_:)``: the IOMMU type is set on first use)
    /// and opens the device from it; for iommufd, opens the cdev, binds it and
    /// attaches it to the IOAS (``attach(_:vfToken:)``). Nothing of the device stays
    /// open when it throws (a group added to a container space stays in it).
    /// Errors name what the host knows: the driver the device is on instead,
    /// the process that holds its group, the permission missing on a node.
    /// ``AttachedDevice/open(_:in:host:)`` does this and keeps the pair.
    public func openDevice(_ address: PCIAddress, requireAllGroupMembersBound: Bool = true, host: PCIHost = .system)
        throws(VFIOError) -> VFIODevice
    {
        do throws(VFIOError) {
            if container != nil {
                _ = try host.vfioDevice(address)
                let group = try self.group(for: address, requireAllMembersBound: requireAllGroupMembersBound, host: host)
                return try group.device(address)
            }
            let device = try VFIODevice.open(cdev: try VFIODevice.cdevPath(of: address, host: host))
            do throws(VFIOError) {
                try attach(device)
            } catch {
                try? device.close()
                throw error
            }
            return device
        } catch {
            throw host.explainOwnership(host.explainAccess(error), device: address)
        }
    }

    /// The group of `address`, opened (checked as `VFIOGroup(number:host:)`
    /// does) and added to the container on first use.
    public func group(for address: PCIAddress, requireAllMembersBound: Bool = true, host: PCIHost = .system)
        throws(VFIOError) -> VFIOGroup
    {
        guard container != nil else {
            throw VFIOError.invalid(.step(.openGroup), "DMA space (\(mode)) uses cdevs, not groups", object: address.description)
        }
        let n = try VFIOGroup.groupNumber(of: address, host: host)
        if let g = group(number: n) { return g }
        return try add(try VFIOGroup(number: n, host: host, requireAllMembersBound: requireAllMembersBound))
    }
}
