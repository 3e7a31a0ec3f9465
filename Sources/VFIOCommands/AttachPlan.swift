import VFIOKit

/// What `vfioctl attach`'s arguments say, checked before anything opens
/// (host unit tests run it through the command's validation).
struct AttachPlan: Equatable {
    var addresses: [PCIAddress]
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
        guard !command.addresses.isEmpty else { throw usage("name at least one device (BDF)") }
        var list: [PCIAddress] = []
        for a in command.addresses {
            let p = try PCIAddress(parsing: a)
            if list.contains(p) { throw usage("\(p) is named twice") }
            list.append(p)
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
        if !bind, let m = barRequests.first(where: { list.contains($0.device) }) {
            throw usage("--map-bar \(m): \(m.device) is handed over unbound, and only a bound device exports its BAR",
                        hint: "add --prebound")
        }
        if hwptRequest != nil && !bind {
            throw usage("--hwpt needs a bound device, and --exec passes the device unbound",
                        hint: "add --prebound, or let the program allocate its HWPT itself")
        }
        addresses = list
        ioas = ioasChoice
        hwpt = hwptRequest
        maps = mapRequests
        barMaps = barRequests
        mode = exec ? .exec(command.program) : (command.hold ? .hold : .check)
        self.bind = bind
        container = command.container
    }
}
