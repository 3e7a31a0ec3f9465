/// An iommufd context: one open /dev/iommu. Every IOAS, HWPT and other
/// iommufd object lives in one context and keeps it alive.
public final class IOMMUFD: Sendable {
    public let fd: OwnedFD

    /// Opens /dev/iommu.
    public init() throws(VFIOError) {
        fd = try OwnedFD.open("/dev/iommu")
    }

    /// Takes ownership of an already open iommufd (passed in by a parent process).
    public init(adopting fd: Int32, label: String = "iommufd") {
        self.fd = OwnedFD(fd, label: label)
    }
}
