import CVFIO
import FoundationEssentials
import VFIOSystem

extension VFIODevice {
    /// Sets the VF token of an SR-IOV physical function on vfio-pci: the UUID
    /// its VFs' users must present to open a VF (``VFIOGroup/device(_:vfToken:)``
    /// on the group path, ``bind(to:token:)`` on the cdev path). vfio-pci
    /// keeps it while the PF stays bound, after this fd closes too; the kernel
    /// never reads it back (that could expose a previous user's token). A
    /// device that is not a PF answers ENOTTY ("not supported by this device").
    /// The corresponding ioctl is `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_PCI_VF_TOKEN`.
    public func setVFToken(_ token: UUID) throws(VFIOError) {
        let bytes = withUnsafeBytes(of: token.uuid) { Array($0) }
        do throws(VFIOError) {
            try setFeature(VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, payload: bytes)
        } catch {
            var e = error
            if e.errno == .inappropriateIOCTLForDevice {
                e.detail = "\(label) is not an SR-IOV physical function on vfio-pci: only a PF has a VF token"
                e.remedies = [.advice("set the token on the PF (the device with sriov_totalvfs); a VF presents it when it is opened")]
            }
            throw e
        }
    }
}
