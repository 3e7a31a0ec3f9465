import FoundationEssentials

// One name for every device the front door opens: a PCI function on vfio-pci
// by its address, or a mediated device by its UUID (the name the kernel gives
// it, and the one VFIO_GROUP_GET_DEVICE_FD matches).

/// A device VFIO opens: a PCI function (bound to vfio-pci) or an mdev (created
/// on a parent that offers mdev types, `PCIHost.createMdev(type:parent:uuid:)`).
///
///     let d = try AttachedDevice.open(try VFIODeviceName(parsing: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"))
public enum VFIODeviceName: Sendable, Hashable, CustomStringConvertible {
    /// A PCI function, by its address.
    case pci(PCIAddress)
    /// A mediated device, by its UUID.
    case mdev(UUID)

    /// A UUID (an mdev) or a PCI address (`DDDD:BB:DD.F` or `BB:DD.F`). The
    /// error says which two forms are understood.
    public init(parsing text: String) throws(VFIOError) {
        if let uuid = UUID(uuidString: text.trimmingWhitespace()) {
            self = .mdev(uuid)
            return
        }
        do {
            self = .pci(try PCIAddress(parsing: text))
        } catch {
            var e = error
            e.detail = (e.detail ?? "\"\(text)\" is not a PCI address") + "; nor is it an mdev's UUID"
            e.remedies = [.advice("write a PCI function as \(PCIAddress.expectedForm), an mdev as its UUID (8-4-4-4-12 hex "
                                  + "digits; `vfioctl list` shows the devices there are)")]
            throw e
        }
    }

    /// The PCI address, nil for an mdev.
    public var pciAddress: PCIAddress? { if case .pci(let a) = self { a } else { nil } }
    /// The mdev's UUID, nil for a PCI function.
    public var mdevUUID: UUID? { if case .mdev(let u) = self { u } else { nil } }

    /// The kernel's name of the device: `DDDD:BB:DD.F`, or the UUID in lower case.
    public var description: String {
        switch self {
        case .pci(let a): a.description
        case .mdev(let u): MdevDevice.name(of: u)
        }
    }
}

extension VFIODevice {
    /// The VFIO cdev path of a PCI function on vfio-pci or of an mdev
    /// (by PCI address, or ``cdevPath(ofMdev:host:)``).
    public static func cdevPath(of name: VFIODeviceName, host: PCIHost = .system) throws(VFIOError) -> String {
        switch name {
        case .pci(let a): try cdevPath(of: a, host: host)
        case .mdev(let u): try cdevPath(ofMdev: u, host: host)
        }
    }

    /// Opens the VFIO cdev of a PCI function or an mdev, not bound to an
    /// iommufd yet (``bind(to:token:)``); errors as the PCI opener
    /// and ``open(mdev:host:)`` give them.
    public static func open(_ name: VFIODeviceName, host: PCIHost = .system) throws(VFIOError) -> VFIODevice {
        switch name {
        case .pci(let a): try open(a, host: host)
        case .mdev(let u): try open(mdev: u, host: host)
        }
    }
}

extension DMASpace {
    /// Opens a PCI function or an mdev and puts it in this address space
    /// (``openDevice(_:requireAllGroupMembersBound:host:)``, ``openDevice(mdev:host:)``).
    /// `vfToken` is the VF token of an SR-IOV VF whose PF is on vfio-pci (or
    /// of such a PF whose VFs are in use): presented at `VFIO_DEVICE_BIND_IOMMUFD`
    /// (iommufd) or in `VFIO_GROUP_GET_DEVICE_FD`'s `"BDF vf_token=UUID"`
    /// (containers). A refused token says what the VF needs
    /// (`PCIHost.explainVFToken(_:device:tokenGiven:)`); an mdev takes none.
    /// Nothing of the device stays open when it throws (a group added to a
    /// container space stays in it).
    public func openDevice(_ name: VFIODeviceName, vfToken: UUID? = nil, requireAllGroupMembersBound: Bool = true,
                           host: PCIHost = .system) throws(VFIOError) -> VFIODevice
    {
        switch name {
        case .mdev(let u):
            if vfToken != nil {
                throw VFIOError.invalid(.step(.attachDevice), "mdev \(name) takes no VF token: VF tokens are vfio-pci's, for "
                                        + "SR-IOV VFs and PFs", object: name.description,
                                        remedies: [.advice("open it without a VF token")])
            }
            return try openDevice(mdev: u, host: host)
        case .pci(let a):
            guard let vfToken else {
                do throws(VFIOError) {
                    return try openDevice(a, requireAllGroupMembersBound: requireAllGroupMembersBound, host: host)
                } catch {
                    throw host.explainVFToken(error, device: a, tokenGiven: false)
                }
            }
            do throws(VFIOError) {
                if container != nil {
                    _ = try host.vfioDevice(a)
                    let group = try self.group(for: a, requireAllMembersBound: requireAllGroupMembersBound, host: host)
                    return try group.device(a, vfToken: vfToken)
                }
                let device = try VFIODevice.open(a, host: host)
                do throws(VFIOError) {
                    try attach(device, vfToken: vfToken)
                } catch {
                    try? device.close()
                    throw error
                }
                return device
            } catch {
                let token = host.explainVFToken(error, device: a, tokenGiven: true)
                if token.detail != error.detail { throw token }
                throw host.explainOwnership(host.explainAccess(error), device: a)
            }
        }
    }
}
