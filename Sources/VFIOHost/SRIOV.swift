import VFIOSystem

// SR-IOV in sysfs (Documentation/PCI/pci-iov-howto.rst): a physical function
// has sriov_totalvfs and sriov_numvfs; writing N to sriov_numvfs asks its
// driver to create N virtual functions (virtfnN links; each VF has a physfn
// link back). vfio-pci creates VFs only with its enable_sriov parameter
// (drivers/vfio/pci/vfio_pci.c), and then captures them: each new VF gets
// driver_override=vfio-pci (vfio_pci_core.c, vfio_pci_bus_notifier). A VF of
// a PF on vfio-pci opens only with the PF's VF token
// (vfio_pci_core_match_token_uuid).

extension VFIOError.Step {
    /// Changing a physical function's number of VFs (`sriov_numvfs`).
    public static let setNumVFs: Self = "set sriov_numvfs"
    /// Reading a device's SR-IOV state (`sriov_totalvfs`, `sriov_numvfs`, `virtfnN`).
    public static let readSRIOV: Self = "read SR-IOV state"
}

/// The SR-IOV state of a physical function.
///
/// JSON keys: `total_vfs`, `num_vfs`, `vfs` (BDFs, by VF number).
public struct SRIOVState: Sendable, Equatable, Encodable {
    /// `sriov_totalvfs`: how many VFs the PF can have.
    public var totalVFs: Int
    /// `sriov_numvfs`: how many it has now.
    public var numVFs: Int
    /// The VFs there are, by VF number (the `virtfnN` links).
    public var virtualFunctions: [PCIAddress]

    enum CodingKeys: String, CodingKey {
        case totalVFs = "total_vfs", numVFs = "num_vfs", virtualFunctions = "vfs"
    }
}

extension PCIHost {
    /// vfio-pci's switch for creating VFs (`vfio_pci.enable_sriov`).
    public static let vfioPCIEnableSRIOV = "/sys/module/vfio_pci/parameters/enable_sriov"

    /// The SR-IOV state of `pf`, or nil when it is not an SR-IOV physical
    /// function (it has no `sriov_totalvfs`).
    public func sriov(of pf: PCIAddress) throws(VFIOError) -> SRIOVState? {
        let dir = sysfsPath(pf)
        guard let total = try readIfPresent(dir + "/sriov_totalvfs")?.trimmingWhitespace() else { return nil }
        guard let totalVFs = Int(total), let numVFs = Int(try readOrThrow(dir + "/sriov_numvfs").trimmingWhitespace()) else {
            throw VFIOError.invalid(.step(.readSRIOV), "\(dir)/sriov_totalvfs or sriov_numvfs is not a number",
                                    object: pf.description, remedies: [.inspect(path: dir + "/")])
        }
        var vfs: [(Int, PCIAddress)] = []
        for name in list(dir) where name.hasPrefix("virtfn") {
            guard let n = Int(name.dropFirst(6)), let target = linkName(dir + "/" + name),
                  let a = try? PCIAddress(parsing: target) else { continue }
            vfs.append((n, a))
        }
        return SRIOVState(totalVFs: totalVFs, numVFs: numVFs, virtualFunctions: vfs.sorted { $0.0 < $1.0 }.map(\.1))
    }

    /// The physical function of a virtual function (its `physfn` link), nil for anything else.
    public func physicalFunction(of vf: PCIAddress) -> PCIAddress? {
        linkName(sysfsPath(vf) + "/physfn").flatMap { try? PCIAddress(parsing: $0) }
    }

    /// Whether vfio-pci may create VFs (its `enable_sriov` parameter); nil when
    /// vfio-pci or the parameter is not there (no CONFIG_PCI_IOV).
    public var vfioPCICreatesVFs: Bool? {
        readTrimmed(Self.vfioPCIEnableSRIOV).map { $0 == "Y" || $0 == "1" }
    }

    /// Creates `count` VFs on `pf` (0 removes them) through `sriov_numvfs`,
    /// and returns the new state. Checked first, each error with its fix: the
    /// device is a PF with that many VFs to give, it has a driver (the driver
    /// creates them), a PF that has VFs goes through 0 first (the PCI core
    /// refuses N -> M), vfio-pci's enable_sriov is set when vfio-pci is the
    /// driver, and no process has a VF's VFIO node open when VFs are removed
    /// (the removal would wait for it).
    @discardableResult
    public func setNumVFs(_ count: Int, on pf: PCIAddress) throws(VFIOError) -> SRIOVState {
        let dev = try device(pf)
        guard let state = try sriov(of: pf) else {
            throw VFIOError.invalid(.step(.setNumVFs), "\(pf) is not an SR-IOV physical function (it has no sriov_totalvfs)"
                                    + (physicalFunction(of: pf).map { "; it is a VF of \($0)" } ?? ""), object: pf.description)
        }
        guard count >= 0, count <= state.totalVFs else {
            throw VFIOError.invalid(.step(.setNumVFs), "\(pf) offers at most \(state.totalVFs) VFs (sriov_totalvfs), not \(count)",
                                    object: pf.description)
        }
        if count == state.numVFs { return state }
        guard let driver = dev.driver else {
            throw VFIOError.invalid(.step(.setNumVFs), "\(pf) has no driver, and its driver creates the VFs", object: pf.description,
                                    remedies: [.bindToVFIO(pf)])
        }
        if count > 0 && state.numVFs > 0 {
            throw VFIOError.invalid(.step(.setNumVFs), "\(pf) has \(state.numVFs) VFs already; the PCI core changes the number "
                                    + "only through 0", object: pf.description,
                                    remedies: [.advice("remove the VFs first (0 VFs), then ask for \(count)")])
        }
        if count == 0 {
            let openers = deviceNodeOpeners()
            var held: [String] = []
            var processes: [Remedy.RunningProcess] = []
            for vf in state.virtualFunctions {
                guard let d = try? device(vf) else { continue }
                for node in [d.vfioCdevPath, d.iommuGroup.map { "/dev/vfio/\($0)" }].compactMap({ $0 }) {
                    for o in openers[node] ?? [] {
                        held.append("pid \(o.pid) (\(o.command)) has \(node) (\(vf)) open")
                        if !processes.contains(where: { $0.pid == o.pid }) { processes.append(.init(pid: o.pid, command: o.command)) }
                    }
                }
            }
            if !held.isEmpty {
                throw VFIOError.invalid(.step(.setNumVFs), "VFs of \(pf) are in use: " + held.joined(separator: "; ")
                                        + "; removing them would wait until they are closed", object: pf.description,
                                        remedies: [.stopProcesses(processes)])
            }
        }
        if count > 0 && VFIODrivers.isVFIOPCI(driver) && vfioPCICreatesVFs == false {
            throw VFIOError.invalid(.step(.setNumVFs), "vfio-pci creates VFs only when its enable_sriov parameter is set, and "
                                    + "it is not (\(Self.vfioPCIEnableSRIOV) is N)", object: pf.description,
                                    remedies: [.advice("set vfio-pci's enable_sriov (write 1 to \(Self.vfioPCIEnableSRIOV), or boot "
                                                       + "with vfio_pci.enable_sriov=1); the PF's user then vouches for its VFs' "
                                                       + "users through the VF token")])
        }
        try write(String(count), to: sysfsPath(pf) + "/sriov_numvfs")
        guard let after = try sriov(of: pf), after.numVFs == count, after.virtualFunctions.count == count else {
            throw VFIOError.invalid(.step(.setNumVFs), "\(pf) accepted \(count) VFs but sysfs does not show them",
                                    object: pf.description, remedies: [.readKernelLog(matching: ["sriov", pf.description])])
        }
        return after
    }

    /// Whether a VF token applies to `a`: it is an SR-IOV VF whose PF is on
    /// vfio-pci, or an SR-IOV PF. The kernel refuses a token for anything
    /// else, a VF of a PF on another driver included (EINVAL;
    /// vfio_pci_validate_vf_token).
    public func takesVFToken(_ a: PCIAddress) -> Bool {
        if let pf = physicalFunction(of: a) { return VFIODrivers.isVFIOPCI((try? driverLink(of: pf)) ?? nil) }
        return ((try? sriov(of: a)) ?? nil) != nil
    }

    /// Adds to `error`, from opening a device (`VFIO_DEVICE_BIND_IOMMUFD`,
    /// `VFIO_GROUP_GET_DEVICE_FD`), what the VF token rules say when they are
    /// the cause (vfio_pci_core_match_token_uuid): EACCES for a VF of a PF on
    /// vfio-pci opened without the PF's token or with another one, or for a PF
    /// whose VFs are in use opened without their token; EINVAL for a token
    /// given where none applies. `tokenGiven` says whether the open carried
    /// one. Other errors come back unchanged.
    public func explainVFToken(_ error: VFIOError, device a: PCIAddress, tokenGiven: Bool) -> VFIOError {
        guard error.operation == .ioctl(.vfioDeviceBindIOMMUFD) || error.operation == .ioctl(.vfioGroupGetDeviceFD),
              let code = error.errno, code == .permissionDenied || code == .invalidArgument else { return error }
        var e = error
        let reopen = Remedy.advice("open it with the VF token (a UUID) the PF's user set: the token argument of "
                                   + "VFIODevice.bind(to:token:) or VFIOGroup.device(_:vfToken:)")
        if let pf = physicalFunction(of: a) {
            let pfDriver = (try? driverLink(of: pf)) ?? nil
            if code == .permissionDenied {
                e.detail = "\(a) is a VF of \(pf), which is bound to \(pfDriver ?? "vfio-pci"): "
                    + (tokenGiven ? "the VF token given is not the one its PF's user set"
                                  : "opening it needs the VF token its PF's user set")
                e.remedies = [reopen]
                return e
            }
            if tokenGiven && !VFIODrivers.isVFIOPCI(pfDriver) {
                e.detail = "\(a) is a VF of \(pf), whose driver is \(pfDriver ?? "none"), not vfio-pci: there is no VF token to give"
                e.remedies = [.advice("open it without a VF token")]
                return e
            }
            return error
        }
        let isPF = ((try? sriov(of: a)) ?? nil) != nil
        if code == .permissionDenied && isPF {
            e.detail = "\(a) is an SR-IOV PF whose VFs are in use: opening it needs their current VF token"
                + (tokenGiven ? ", and the one given is not it" : "")
            e.remedies = [.advice("open it with the VF token its VFs were opened with, or close the VFs first")]
            return e
        }
        if code == .invalidArgument && tokenGiven && !isPF {
            e.detail = "\(a) is neither an SR-IOV PF nor a VF: a VF token does not apply to it"
            e.remedies = [.advice("open it without a VF token")]
            return e
        }
        return error
    }
}
