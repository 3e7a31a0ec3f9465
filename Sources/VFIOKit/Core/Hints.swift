import SystemPackage

/// The hint table: for an operation and errno, the common cause and the fix.
///
/// Call sites with more facts (the size asked of a map, the members of a group)
/// put them in `VFIOError.detail`; this table only knows the operation's name,
/// the errno and the object.
enum Hints {
    static func hint(operation op: String, errno: Errno, object: String?) -> String? {
        let node = object ?? "the device node"
        switch errno.rawValue {
        case 1, 13:  // EPERM, EACCES
            if op == "VFIO_DEVICE_BIND_IOMMUFD" {
                return "two causes: another member of its IOMMU group is bound to another iommufd context (another "
                    + "process: a group cannot be split between owners), or the IOMMU does not isolate MSIs (no "
                    + "interrupt remapping); `vfioctl list` marks held devices, `vfioctl show` on one names the holders, "
                    + "and `vfioctl doctor` checks "
                    + "remapping. Allowing unsafe interrupts (iommufd.allow_unsafe_interrupts=1) is a security "
                    + "decision: VFIOKit never sets it."
            }
            if op == "VFIO_SET_IOMMU" || op == "VFIO_GROUP_SET_CONTAINER" {
                return "the IOMMU does not isolate MSI interrupts; vfio_iommu_type1.allow_unsafe_interrupts=1 "
                    + "would allow it, which is a security decision VFIOKit never takes for you"
            }
            if op == "open" {
                return "\(node) needs read and write permission for this user (root, or a udev rule / "
                    + "`chown` for the user running the driver); for /dev/vfio/N the group must also be viable"
            }
            return "this needs privileges (CAP_SYS_RAWIO/CAP_IPC_LOCK or root) or the device is not owned by this process"
        case 2:  // ENOENT
            if op == "open" {
                if let o = object, o.hasPrefix("/dev/iommu") {
                    return "the kernel has no iommufd (CONFIG_IOMMUFD, Linux 6.2 or later) or the module is not loaded"
                }
                if let o = object, o.hasPrefix("/dev/vfio/devices") {
                    return "no VFIO cdev: bind the device to vfio-pci (`vfioctl list` shows each device's address and what "
                        + "makes it ready, e.g. `vfioctl bind` with its address); cdevs need "
                        + "CONFIG_VFIO_DEVICE_CDEV (Linux 6.6 or later)"
                }
                if let o = object, o.hasPrefix("/dev/vfio") {
                    return "the group has no VFIO node: bind its devices to vfio-pci (`vfioctl list --groups` shows its "
                        + "members; `vfioctl bind` one of them with --group) "
                        + "and check that the kernel has an IOMMU enabled (`vfioctl doctor`)"
                }
            }
            if op.hasSuffix("UNMAP") || op == "VFIO_IOMMU_UNMAP_DMA" {
                return "no mapping covers that range, or the range splits a mapping: unmap whole mappings"
            }
            return nil
        case 16:  // EBUSY
            if op == "open" || op == "VFIO_GROUP_GET_DEVICE_FD" || op == "VFIO_DEVICE_BIND_IOMMUFD" {
                return "the IOMMU group is held by another process or fd: its group node is open, or a member's cdev "
                    + "is bound (a VM, another driver, `vfioctl attach --hold`); `vfioctl list` marks held devices and "
                    + "`vfioctl show` on one names the process"
            }
            if op == "IOMMU_DESTROY" {
                return "the object is still in use (a device or HWPT is attached to it): detach or destroy the users first"
            }
            return "the resource is in use"
        case 12:  // ENOMEM
            if op.contains("MAP") || op.contains("COPY") {
                return "pinning memory for DMA counts against RLIMIT_MEMLOCK (`ulimit -l`); raise it "
                    + "(limits.conf memlock, systemd LimitMEMLOCK=) or map less"
            }
            return nil
        case 28:  // ENOSPC
            if op == "VFIO_IOMMU_MAP_DMA" {
                return "the type1 IOMMU's mapping count limit is reached (module parameter "
                    + "vfio_iommu_type1.dma_entry_limit): use fewer, larger mappings or raise the limit"
            }
            return nil
        case 22:  // EINVAL
            if op == "VFIO_DEVICE_BIND_IOMMUFD" {
                return "the device is already bound through another fd (a VFIO cdev is bound by one fd at a time): "
                    + "`vfioctl list` marks it held and `vfioctl show` on it names the process that has it"
            }
            if op.hasPrefix("VFIO_IOMMU") || op == "VFIO_CHECK_EXTENSION" && object?.contains("container") == true {
                return "a container needs VFIO_SET_IOMMU (after VFIO_GROUP_SET_CONTAINER) before it can map or report info"
            }
            return nil
        case 25, 95:  // ENOTTY, EOPNOTSUPP
            if errno.rawValue == 25, let since = KernelFeatures.introduced[op] {
                return "this kernel lacks \(op) (added in Linux \(since)); running \(KernelFeatures.runningRelease)"
            }
            return errno.rawValue == 95
                ? "not supported by this device, IOMMU or kernel"
                : "this fd does not support \(op) (wrong kind of fd, or the kernel lacks it)"
        case 17:  // EEXIST
            return "that IOVA range is already mapped: unmap it first or let the kernel choose the IOVA"
        case 75:  // EOVERFLOW
            return "the range wraps around the end of the 64-bit address space"
        default:
            return nil
        }
    }
}

/// Which Linux release added each ioctl, for "this kernel lacks X" messages.
public enum KernelFeatures {
    public static let introduced: [String: String] = [
        "IOMMU_DESTROY": "6.2", "IOMMU_IOAS_ALLOC": "6.2", "IOMMU_IOAS_ALLOW_IOVAS": "6.2",
        "IOMMU_IOAS_COPY": "6.2", "IOMMU_IOAS_IOVA_RANGES": "6.2", "IOMMU_IOAS_MAP": "6.2",
        "IOMMU_IOAS_UNMAP": "6.2", "IOMMU_OPTION": "6.2", "IOMMU_VFIO_IOAS": "6.2",
        "IOMMU_HWPT_ALLOC": "6.6", "IOMMU_GET_HW_INFO": "6.6",
        "IOMMU_HWPT_SET_DIRTY_TRACKING": "6.7", "IOMMU_HWPT_GET_DIRTY_BITMAP": "6.7",
        "IOMMU_HWPT_INVALIDATE": "6.8", "IOMMU_FAULT_QUEUE_ALLOC": "6.11",
        "IOMMU_IOAS_MAP_FILE": "6.13", "IOMMU_VIOMMU_ALLOC": "6.13", "IOMMU_VDEVICE_ALLOC": "6.13",
        "IOMMU_IOAS_CHANGE_PROCESS": "6.13", "IOMMU_VEVENTQ_ALLOC": "6.15", "IOMMU_HW_QUEUE_ALLOC": "6.17",
        "VFIO_DEVICE_BIND_IOMMUFD": "6.6", "VFIO_DEVICE_ATTACH_IOMMUFD_PT": "6.6",
        "VFIO_DEVICE_DETACH_IOMMUFD_PT": "6.6", "VFIO_DEVICE_FEATURE": "5.7",
        "VFIO_MIG_GET_PRECOPY_INFO": "6.2", "VFIO_DEVICE_IOEVENTFD": "4.17",
    ]

    /// The running kernel's release string (`uname -r`).
    public static var runningRelease: String {
        var u = utsname()
        guard uname(&u) == 0 else { return "an unknown kernel" }
        return withUnsafeBytes(of: &u.release) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
