// The doctor: the host's checks (VFIOHost) plus the one that needs the kernel
// objects, the kernel's own answer on cache coherency for a device.

extension PCIHost {
    /// Checks everything between this machine and a working VFIO setup: the
    /// host's checks (``hostChecks(_:)``: IOMMU, interrupt remapping, nodes and
    /// the iommufd requests the kernel has, memlock, huge pages, groups), and,
    /// with a device on vfio-pci and `probeKernel`, the kernel's answer on
    /// whether its IOMMU domain enforces cache coherency
    /// (``cacheCoherency(of:)``). Never changes anything.
    public func doctor(_ options: DoctorOptions = DoctorOptions()) -> [DoctorFinding] {
        var findings = hostChecks(options)
        if options.probeKernel, let a = options.device, let d = try? device(a), d.isBoundToVFIO {
            let id = "device.\(a).cache-coherency"
            do throws(VFIOError) {
                let cc = try cacheCoherency(of: d)
                findings.append(DoctorFinding(id, .info, .deviceCacheCoherency(enforced: cc.enforced, query: cc.query)))
            } catch {
                findings.append(DoctorFinding(id, .warn, .deviceCacheCoherencyUnknown(error), remedies: error.remedies))
            }
        }
        return findings
    }

    /// Opens the device's cdev, binds it to a fresh iommufd, attaches it to an
    /// empty IOAS (nothing mapped: the device can reach no memory) and asks
    /// whether its domain enforces cache coherency
    /// (`VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU)`, see ``IOAS/cacheCoherency()``);
    /// closes everything. Ownership errors name the holder.
    public func cacheCoherency(of device: PCIDevice) throws(VFIOError) -> CacheCoherency {
        guard let cdev = device.vfioCdevPath else {
            throw .invalid(.step(.probeCacheCoherency), "\(device.address) has no VFIO cdev", object: device.address.description,
                           remedies: [.bindToVFIO(device.address)])
        }
        let iommufd = try IOMMUFD()
        defer { try? iommufd.close() }
        let dev = try VFIODevice.open(cdev: cdev)
        defer { try? dev.close() }
        do throws(VFIOError) { try dev.bind(to: iommufd) } catch { throw explainOwnership(error, device: device.address) }
        let ioas = try IOAS(iommufd)
        try dev.attach(to: ioas)
        defer { try? dev.detach() }
        return try ioas.cacheCoherency()
    }
}
