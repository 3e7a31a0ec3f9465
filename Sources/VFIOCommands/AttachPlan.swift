import FoundationEssentials
import VFIOKit

/// What `vfioctl attach`'s arguments say, checked before anything opens
/// (host unit tests run it through the command's validation).
struct AttachPlan: Equatable {
    /// The devices: PCI functions and mdevs.
    var addresses: [VFIODeviceName]
    /// `--vf-token`: presented for each SR-IOV VF or PF named.
    var vfToken: UUID?
    var ioas: IOASChoice
    var hwpt: HWPTRequest?
    var maps: [MapRequest]
    var barMaps: [BARMapRequest]
    var mode: Mode
    /// Whether the devices are bound (and attached) here; --exec without --prebound hands them over unbound.
    var bind: Bool
    /// The group path (--container).
    var container: Bool

    enum Mode: Equatable { case check, hold, exec([String]) }

    init(_ command: AttachCommand) throws(VFIOError) {
        func usage(_ what: String, hint: String? = nil) -> VFIOError {
            .invalid(.step("attach"), what, remedies: hint.map { [.advice($0)] } ?? [])
        }
        guard !command.addresses.isEmpty else { throw usage("name at least one device (BDF, or an mdev's UUID)") }
        var list: [VFIODeviceName] = []
        for a in command.addresses {
            let p = try VFIODeviceName(parsing: a)
            if list.contains(p) { throw usage("\(p) is named twice") }
            list.append(p)
        }
        var token: UUID?
        if let t = command.vfToken {
            guard let u = UUID(uuidString: t) else {
                throw usage("--vf-token \(t) is not a UUID", hint: "write it as 8-4-4-4-12 hex digits: the UUID the PF's user set "
                                + "(vfioctl bind sets one with --sriov N --vf-token UUID)")
            }
            guard list.contains(where: { $0.pciAddress != nil }) else {
                throw usage("--vf-token is for SR-IOV VFs (and PFs) on vfio-pci: an mdev takes no VF token",
                            hint: "leave out --vf-token")
            }
            token = u
        }
        let ioasChoice = try IOASChoice(parsing: command.ioas)
        let hwptRequest = try command.hwpt.map { (t) throws(VFIOError) in try HWPTRequest(parsing: t) }
        var mapRequests: [MapRequest] = []
        for m in command.maps { mapRequests.append(try MapRequest(parsing: m)) }
        var barRequests: [BARMapRequest] = []
        for m in command.barMaps { barRequests.append(try BARMapRequest(parsing: m)) }
        let exec = command.exec, prebound = command.prebound
        if command.hold && exec { throw usage("--hold and --exec exclude each other", hint: "--exec already keeps everything alive while the program runs") }
        if exec && command.program.isEmpty { throw usage("--exec needs a program after `--`", hint: "vfioctl attach BDF --exec -- PROGRAM ARGS...") }
        if prebound && !exec { throw usage("--prebound only applies to --exec (without --exec the devices are always bound and attached)") }
        if command.container {
            if ioasChoice != .new { throw usage("--ioas ID is an iommufd object; --container uses a type1 container") }
            if hwptRequest != nil { throw usage("--hwpt is an iommufd object; --container uses a type1 container") }
            if command.iommufdFD != nil { throw usage("--iommufd and --container exclude each other") }
            if prebound { throw usage("--prebound is for iommufd; with --container the device fd is always ready") }
        }
        if command.container, let first = barRequests.first {
            throw usage("--map-bar maps a dma-buf of the BAR (IOMMU_IOAS_MAP_FILE), which needs iommufd; the type1 container "
                            + "maps a BAR only by the address of its mmap",
                        hint: "drop --container: `vfioctl attach \(list.map(\.description).joined(separator: " ")) --map-bar \(first)`")
        }
        let bind = command.container || !exec || prebound
        if !bind, let m = barRequests.first(where: { list.contains(.pci($0.device)) }) {
            throw usage("--map-bar \(m): \(m.device) is handed over unbound, and only a bound device exports its BAR",
                        hint: "add --prebound")
        }
        if token != nil && !bind {
            throw usage("--vf-token is presented when the device is bound (VFIO_DEVICE_BIND_IOMMUFD), and --exec passes the "
                            + "device unbound", hint: "add --prebound, or give the token to the program, which binds it")
        }
        if hwptRequest != nil && !bind {
            throw usage("--hwpt needs a bound device, and --exec passes the device unbound",
                        hint: "add --prebound, or let the program allocate its HWPT itself")
        }
        addresses = list
        vfToken = token
        ioas = ioasChoice
        hwpt = hwptRequest
        maps = mapRequests
        barMaps = barRequests
        mode = exec ? .exec(command.program) : (command.hold ? .hold : .check)
        self.bind = bind
        container = command.container
    }
}
