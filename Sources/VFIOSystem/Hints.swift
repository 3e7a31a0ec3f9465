import SystemPackage

/// The common causes of a request's or syscall's errno, and their remedies.
///
/// Call sites with more facts (the size asked of a map, the members of a group,
/// the holder of a device) put them in `VFIOError.detail` and give their own
/// remedies; this table only knows the operation, the errno and the object.
enum CommonRemedies {
    static func remedies(operation: VFIOError.Operation, errno: Errno, object: String?) -> [Remedy] {
        let request = operation.request
        let isOpen = operation == .syscall(.open)
        switch errno {
        case .notPermitted, .permissionDenied:
            if request == .vfioDeviceBindIOMMUFD {
                return [.advice("two causes: another member of its IOMMU group is bound to another iommufd context "
                                + "(another process: a group cannot be split between owners), or the IOMMU does not "
                                + "isolate MSIs (no interrupt remapping)"),
                        .findHolder(nil), .enableInterruptRemapping(virtioIOMMU: false), .diagnose(nil),
                        .allowUnsafeInterrupts(parameter: "iommufd.allow_unsafe_interrupts")]
            }
            if request == .vfioSetIOMMU || request == .vfioGroupSetContainer {
                return [.advice("the IOMMU does not isolate MSI interrupts"),
                        .enableInterruptRemapping(virtioIOMMU: false),
                        .allowUnsafeInterrupts(parameter: "vfio_iommu_type1.allow_unsafe_interrupts")]
            }
            if isOpen {
                var out: [Remedy] = [.grantAccess(path: object ?? "the device node", uid: nil)]
                if let o = object, o.hasPrefix("/dev/vfio/"), Int(o.dropFirst(10)) != nil {
                    out.append(.advice("for /dev/vfio/N the group must also be viable"))
                }
                return out
            }
            return [.runPrivileged]
        case .noSuchFileOrDirectory:
            if isOpen, let o = object {
                if o.hasPrefix("/dev/iommu") {
                    return [.kernelConfig(["CONFIG_IOMMUFD"], since: KernelVersion(6, 2)), .loadModule("iommufd")]
                }
                if o.hasPrefix("/dev/vfio/devices") {
                    return [.bindToVFIO(nil), .kernelConfig(["CONFIG_VFIO_DEVICE_CDEV"], since: KernelVersion(6, 6))]
                }
                if o.hasPrefix("/dev/vfio") {
                    return [.bindGroup(nil), .diagnose(nil)]
                }
            }
            if request == .iommuIOASUnmap || request == .vfioIOMMUUnmapDMA {
                return [.advice("no mapping covers that range, or the range splits a mapping: unmap whole mappings")]
            }
            return []
        case .resourceBusy:
            if isOpen || request == .vfioGroupGetDeviceFD || request == .vfioDeviceBindIOMMUFD {
                return [.advice("the IOMMU group is held by another process or fd: its group node is open, or a "
                                + "member's cdev is bound (a VM, another driver, a holder process)"),
                        .findHolder(nil)]
            }
            if request == .iommuDestroy {
                return [.advice("the object is still in use (a device or HWPT is attached to it): detach or destroy "
                                + "the users first")]
            }
            return [.advice("the resource is in use")]
        case .noMemory:
            if let r = request, r == .iommuIOASMap || r == .iommuIOASMapFile || r == .iommuIOASCopy
                || r == .vfioIOMMUMapDMA
            {
                return [.raiseMemlock(atLeast: nil)]
            }
            return []
        case .noSpace:
            if request == .vfioIOMMUMapDMA {
                return [.advice("the type1 IOMMU's mapping count limit is reached (module parameter "
                                + "vfio_iommu_type1.dma_entry_limit): use fewer, larger mappings or raise the limit")]
            }
            return []
        case .invalidArgument:
            if request == .vfioDeviceBindIOMMUFD {
                return [.advice("the device is already bound through another fd (a VFIO cdev is bound by one fd at "
                                + "a time)"),
                        .findHolder(nil)]
            }
            if let r = request, r.target == .container, r != .vfioGetAPIVersion, r != .vfioSetIOMMU,
               r != .vfioCheckExtension || object?.contains("container") == true
            {
                return [.advice("a container needs VFIO_SET_IOMMU (after VFIO_GROUP_SET_CONTAINER) before it can map "
                                + "or report info")]
            }
            return []
        case .inappropriateIOCTLForDevice:
            guard let r = request else { return [] }
            let running = KernelVersion.running
            if r == .vfioDeviceFeature && running.map({ $0 >= r.introduced }) ?? true {
                // drivers/vfio/vfio_main.c, vfio_ioctl_device_feature(): a feature id the
                // device's driver does not handle answers ENOTTY.
                return [.advice("the device does not support this feature (VFIO_DEVICE_FEATURE answers ENOTTY for a "
                                + "feature its driver does not handle); probeFeature(_:) tells which features a "
                                + "device has")]
            }
            if let running, running >= r.introduced {
                return [.advice("this fd does not support \(r.name) (added in Linux \(r.introduced); this kernel, "
                                + "\(KernelVersion.runningRelease), has it): a wrong kind of fd")]
            }
            return [.newerKernel(lacking: [r], running: running == nil ? nil : KernelVersion.runningRelease)]
        case .notSupported:
            if request?.family == .iommufd {
                // iommufd answers EOPNOTSUPP for flags, types and options it does not know
                // (ioas.c, hw_pagetable.c, main.c) as well as for what the IOMMU lacks.
                return [.advice("flags, a type or an option this kernel does not know, or a feature this IOMMU or "
                                + "driver lacks: IOMMUFD.features() and hardwareInfo(device:) say what this kernel "
                                + "and IOMMU support")]
            }
            return [.advice("not supported by this device, IOMMU or kernel")]
        case .fileExists:
            return [.advice("that IOVA range is already mapped: unmap it first or let the kernel choose the IOVA")]
        case .overflow:
            return [.advice("the range wraps around the end of the 64-bit address space")]
        default:
            return []
        }
    }
}

extension KernelVersion {
    /// The running kernel's release string (`uname -r`).
    public static var runningRelease: String {
        (try? Sys.kernelRelease(Sys.current)) ?? "an unknown kernel"
    }
}
