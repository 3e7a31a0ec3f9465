import ArgumentParser
import VFIOKit

/// `--container`, for the device commands: use the group path instead of the cdev.
struct PathOptions: ParsableArguments {
    @Flag(name: .long, help: "Open the device through its group and a VFIO container (/dev/vfio/vfio) instead of its cdev and /dev/iommu.")
    var container = false

    /// The DMA mode the device commands open devices in: native iommufd, or
    /// with `--container` the best IOMMU type of /dev/vfio/vfio (type1v2, else type1).
    var mode: DMAMode { PathOptions.mode(container: container) }

    static func mode(container: Bool) -> DMAMode {
        guard container else { return .iommufd }
        return DMAMode.best(among: DMAMode.available().filter { $0.container?.backend == .legacy }) ?? .type1v2
    }
}

extension AttachedDevice {
    /// Opens `text` (a BDF) for one device command (bar, config, irqs, reset,
    /// hw-info) through the library's front door: attached to an address
    /// space of its own with nothing mapped, so the device can reach no memory.
    static func forCommand(_ text: String, host: PCIHost, mode: DMAMode) throws(VFIOError) -> AttachedDevice {
        try AttachedDevice.open(try PCIAddress(parsing: text), mode: mode, host: host)
    }
}
