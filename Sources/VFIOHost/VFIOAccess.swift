import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The one rule for which PCI drivers hand a function to VFIO: vfio-pci
/// itself and its variant drivers (drivers/vfio/pci/*: `mlx5_vfio_pci`,
/// `hisi_acc_vfio_pci`, `virtio_vfio_pci`, ...; a PCI driver is named after
/// its module, so variants end in `_vfio_pci`, or `-vfio-pci` where a driver
/// names itself). Binding, viability, readiness and the openers all ask here.
public enum VFIODrivers {
    /// The driver `vfioctl bind` and VFIOKit bind devices to.
    public static let vfioPCI = "vfio-pci"

    /// Whether `driver` is vfio-pci or a vfio-pci variant.
    public static func isVFIOPCI(_ driver: String?) -> Bool {
        guard let driver else { return false }
        return driver == vfioPCI || driver.hasSuffix("_vfio_pci") || driver.hasSuffix("-vfio-pci")
    }
}

extension PCIHost {
    /// The device at `a`, when it is on a driver that hands it to VFIO
    /// (``PCIDevice/isBoundToVFIO``). The error says when there is no such
    /// device, or which driver (or none) has it instead and how to bind it.
    public func vfioDevice(_ a: PCIAddress) throws(VFIOError) -> PCIDevice {
        let dev = try device(a)
        guard dev.isBoundToVFIO else {
            throw VFIOError.invalid(.step("find VFIO device"), "\(a) is not bound to vfio-pci (its driver is \(dev.driver ?? "none"))",
                                    object: a.description, remedies: [.bindToVFIO(a)])
        }
        return dev
    }

    /// Adds to an EACCES or EPERM from opening a node (`/dev/iommu`,
    /// `/dev/vfio/...`) the node's owner and mode and this process's ids, and
    /// what grants access. Other errors come back unchanged.
    public func explainAccess(_ error: VFIOError) -> VFIOError {
        guard error.operation == .syscall(.open), let node = error.object,
              let code = error.errno, code == .permissionDenied || code == .notPermitted else { return error }
        var e = error
        var facts = "this process runs as uid \(Sys.getuid(kernel)) gid \(Sys.getgid(kernel))"
        if let st = fileStatus(node) {
            facts = "\(node) is \(st.modeString) owned by uid \(st.uid) gid \(st.gid); " + facts
                + "; open needs read and write permission on it"
        }
        e.detail = [e.detail, facts].compactMap { $0 }.joined(separator: ". ")
        e.remedies = [.grantAccess(path: node, uid: nil),
                      .advice(node.hasPrefix("/dev/iommu") ? "/dev/iommu is safe to open for any user who may use a VFIO device"
                                                           : "the VFIO node grants control of the device")]
        return e
    }
}
