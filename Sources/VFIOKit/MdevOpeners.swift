import FoundationEssentials

// Opening an mdev instance: through its VFIO cdev (then bound to an iommufd,
// where its parent driver gets an access object: the IOMMU is emulated), or
// through its IOMMU group, a group of its own, by its UUID
// (VFIO_GROUP_GET_DEVICE_FD matches a device by dev_name(), and an mdev's
// name is its UUID in lower case; drivers/vfio/group.c).

extension VFIODevice {
    /// The cdev path of an mdev (`/dev/vfio/devices/vfioN`, from
    /// `/sys/bus/mdev/devices/UUID/vfio-dev`). The error says when there is
    /// no such mdev, or that its driver did not register it with VFIO.
    public static func cdevPath(ofMdev uuid: UUID, host: PCIHost = .system) throws(VFIOError) -> String {
        let m = try host.mdev(uuid)
        guard let path = m.vfioCdevPath else {
            throw VFIOError.invalid(.step(.findVFIOCdev), "mdev \(m.name) has no VFIO cdev (its driver: \(m.driver ?? "none"))",
                                    object: m.name,
                                    remedies: [.kernelConfig(["CONFIG_VFIO_DEVICE_CDEV"], since: KernelVersion(6, 6))])
        }
        return path
    }

    /// Opens the VFIO cdev of an mdev (not bound to an iommufd yet:
    /// ``bind(to:token:)``). A refused open says who holds it or which
    /// permission is missing on the node.
    public static func open(mdev uuid: UUID, host: PCIHost = .system) throws(VFIOError) -> VFIODevice {
        let path = try cdevPath(ofMdev: uuid, host: host)
        do throws(VFIOError) {
            return try open(cdev: path)
        } catch {
            throw host.explainOwnership(host.explainAccess(error), device: nil,
                                        group: try? VFIOGroup.groupNumber(ofMdev: uuid, host: host))
        }
    }
}

extension VFIOGroup {
    /// The IOMMU group of an mdev (a group of its own, with no PCI member).
    public static func groupNumber(ofMdev uuid: UUID, host: PCIHost = .system) throws(VFIOError) -> Int {
        let m = try host.mdev(uuid)
        guard let n = m.iommuGroup else {
            throw VFIOError.invalid(.step(.findIOMMUGroup), "mdev \(m.name) has no IOMMU group (its driver: \(m.driver ?? "none"))",
                                    object: m.name, remedies: [.readKernelLog(matching: ["mdev", m.parent ?? "vfio"])])
        }
        return n
    }

    /// Opens the IOMMU group of an mdev (`/dev/vfio/N`), checked by the
    /// kernel's viability flag. An open refused because another process holds
    /// the group names it.
    public convenience init(mdev uuid: UUID, host: PCIHost = .system) throws(VFIOError) {
        let n = try VFIOGroup.groupNumber(ofMdev: uuid, host: host)
        do throws(VFIOError) {
            try self.init(number: n)
        } catch {
            throw host.explainOwnership(host.explainAccess(error), device: nil, group: n)
        }
    }

    /// Opens an mdev of this group by its UUID (`VFIO_GROUP_GET_DEVICE_FD`
    /// with the UUID in lower case). The group must be in a container with an
    /// IOMMU set.
    public func device(mdev uuid: UUID) throws(VFIOError) -> VFIODevice {
        try device(named: MdevDevice.name(of: uuid))
    }
}

extension DMASpace {
    /// Opens an mdev and puts it in this address space: for containers, opens
    /// its group, adds it (the IOMMU type is set on first use) and opens the
    /// device from it by UUID; for iommufd, opens its cdev, binds it and
    /// attaches it to the IOAS (an emulated attach: the parent driver reaches
    /// guest memory through the IOAS's access). Nothing of the device stays
    /// open when it throws (a group added to a container space stays in it).
    public func openDevice(mdev uuid: UUID, host: PCIHost = .system) throws(VFIOError) -> VFIODevice {
        if container != nil {
            let n = try VFIOGroup.groupNumber(ofMdev: uuid, host: host)
            if let group = group(number: n) { return try group.device(mdev: uuid) }
            return try add(try VFIOGroup(mdev: uuid, host: host)).device(mdev: uuid)
        }
        let device = try VFIODevice.open(mdev: uuid, host: host)
        do throws(VFIOError) {
            try attach(device)
        } catch {
            try? device.close()
            throw error
        }
        return device
    }
}
