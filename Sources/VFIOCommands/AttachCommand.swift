import ArgumentParser
import Foundation
import SystemPackage
import VFIOKit
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

/// `vfioctl attach BDF... [--ioas new|ID] [--hwpt FLAGS] [--map SIZE[@IOVA]]... [--hold | --exec -- PROGRAM ARGS...]`.
public struct AttachCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Attach devices to an IOMMU address space: check it, hold it, or hand the ready fds to a program.",
        discussion: """
            Opens /dev/iommu (a new iommufd context), opens each device's VFIO cdev \
            (/dev/vfio/devices/vfioN, found in sysfs), binds it (VFIO_DEVICE_BIND_IOMMUFD), \
            allocates an IOAS (--ioas new, the default) or uses an existing one (--ioas ID, \
            only meaningful in an iommufd shared with you: --iommufd FD), optionally \
            allocates a HWPT on it (--hwpt paging|nest-parent|dirty-tracking, flags joined \
            with commas), attaches every device, maps the buffers asked for with --map \
            (memory vfioctl allocates; SIZE takes K/M/G; @IOVA fixes the address, otherwise \
            the kernel chooses; ,memfd maps a memfd with IOMMU_IOAS_MAP_FILE, ,huge uses \
            2 MiB pages), and reports: device ids, IOAS id, HWPT id, usable IOVA ranges \
            and alignment (IOMMU_IOAS_IOVA_RANGES), the IOMMU's hardware info \
            (IOMMU_GET_HW_INFO), every mapping, and whether the IOMMU enforces cache \
            coherency (blocks no-snoop DMA, so a VM needs no wbinvd emulation): \
            VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) on the container, or on /dev/iommu \
            with the IOAS as its compat IOAS (IOMMU_VFIO_IOAS); reported, never changed.

            A process's fds close when it exits, and the attachment with them. So attach \
            works three ways:
              check (default)  attach, report, release in order (detach, unmap, close the \
            device, destroy HWPT and IOAS, close the iommufd), exit 0.
              --hold           keep everything until SIGINT or SIGTERM, then release and exit 0.
              --exec -- PROGRAM ARGS...
                               start PROGRAM with the iommufd and device fds inherited (exactly \
            those: everything else is close-on-exec), wait for it and exit with its status \
            (128+N when signal N killed it; SIGINT/SIGTERM are passed on to it).

            --exec hands the device fd over UNBOUND by default: QEMU (-object \
            iommufd,fd=... -device vfio-pci,fd=...,iommufd=...) and libvirt-style \
            consumers bind the device to the iommufd themselves, and a device fd binds \
            only once (QEMU fails with EINVAL otherwise). The IOAS is still allocated \
            (and --map done) in the shared iommufd. --prebound binds and attaches first, \
            for programs that adopt a ready device (VFIOKit's vfiokit-edu-dma does).

            Placeholders in PROGRAM's arguments. Fds (inherited descriptor numbers): \
            {iommufd}, {device} (the first device), {device:BDF}; with --container: \
            {container}, {group} (the first device's), {group:N}. Ids (numbers, not fds): \
            {ioas}, {hwpt} (when one was allocated), {devid}, {devid:BDF} (iommufd device \
            ids, --prebound only); and {bdf} (the first device's address). An unknown \
            placeholder is an error. Environment: VFIOKIT_IOMMUFD_FD, VFIOKIT_DEVICE_FD, \
            VFIOKIT_DEVICE_FD_<BDF> (with : and . as _, e.g. VFIOKIT_DEVICE_FD_0000_00_03_0), \
            VFIOKIT_DEVICE_BDF, VFIOKIT_IOAS_ID, VFIOKIT_HWPT_ID, VFIOKIT_DEVICE_ID and \
            VFIOKIT_DEVICE_ID_<BDF> (--prebound), VFIOKIT_HANDOFF (unbound or prebound); \
            with --container VFIOKIT_CONTAINER_FD, VFIOKIT_GROUP_FD, VFIOKIT_GROUP_FD_<N>.

            --container uses the group path instead: /dev/vfio/vfio as a type1 \
            container, /dev/vfio/N for each device's group (every member must be bound \
            to vfio-pci), VFIO_GROUP_GET_DEVICE_FD; --map without @IOVA gets an address \
            from vfioctl (type1 has no kernel-chosen IOVAs).

            With --exec the report goes to stderr (stdout is the program's); with --hold \
            and --json the "holding" line goes to stderr.

            JSON (--json): {"mode": "iommufd"|"container", "handoff": "unbound"|"prebound"|null, \
            "iommufd": {"fd"} or null, "ioas": {"id", "created", "iova_ranges": [{"start", \
            "last"}], "iova_alignment"} or null, "hwpt": {"id", "flags"} or null, \
            "container": {"fd", "iommu_type", "iova_ranges", "page_sizes"} or null, \
            "groups": [{"number", "fd"}], "devices": [{"address", "cdev", "fd", \
            "device_id", "attached_id", "hw_info"}], "mappings": [{"iova", "length", \
            "backing"}], "cache_coherency": {"enforced" (true, false or null), "query", \
            "meaning"}}. Numbers are integers; device_id, attached_id (the HWPT the \
            kernel attached the device to) and hw_info are null when the device was not \
            bound; hw_info is as in `vfioctl hw-info --json`.

            Examples:
              vfioctl attach 0000:00:03.0 --ioas new
              vfioctl attach 00:03.0 --map 2M --map 64K@0x100000 --json
              vfioctl attach 00:03.0 --hwpt nest-parent --hold
              vfioctl attach 00:03.0 --exec -- qemu-system-x86_64 -M q35 ... \\
                  -object iommufd,id=iommufd0,fd={iommufd} -device vfio-pci,fd={device},iommufd=iommufd0
              vfioctl attach 00:03.0 --prebound --exec -- vfiokit-edu-dma
              vfioctl attach 00:03.0 --container --exec -- my-driver --container-fd {container} --group-fd {group}
            """)

    @Argument(help: "The devices: DDDD:BB:DD.F or BB:DD.F, bound to vfio-pci.")
    var addresses: [String] = []

    @Option(name: .long, help: ArgumentHelp("`new` to allocate an IOAS, or the id of one in a shared iommufd.", valueName: "new|ID"))
    var ioas: String = "new"

    @Option(name: .long, help: ArgumentHelp("Allocate a HWPT on the IOAS and attach to it: `paging` or flags nest-parent,dirty-tracking.", valueName: "paging|FLAGS"))
    var hwpt: String?

    @Option(name: .customLong("map"), help: ArgumentHelp("Map a buffer vfioctl allocates (repeatable).", valueName: "SIZE[@IOVA][,BACKING]"))
    var maps: [String] = []

    @Option(name: .customLong("iommufd"), help: ArgumentHelp("Use this inherited iommufd instead of opening /dev/iommu (for --ioas ID).", valueName: "FD"))
    var iommufdFD: Int32?

    @Flag(name: .long, help: "Keep the attachment until SIGINT or SIGTERM.")
    var hold = false

    @Option(name: .customLong("exec"), parsing: .remaining,
            help: ArgumentHelp("Start PROGRAM with the fds inherited and exit with its status; everything after --exec (and an optional `--`) is the program and its arguments.", valueName: "-- PROGRAM ARGS"))
    var execArguments: [String] = []

    /// `--exec` was given (possibly with nothing after it, which is an error).
    var exec: Bool { !execArguments.isEmpty }
    /// The program and its arguments, without the `--` that may separate them.
    var program: [String] { execArguments.first == "--" ? Array(execArguments.dropFirst()) : execArguments }

    @Flag(name: .long, help: "With --exec: bind and attach the devices before handing them over (default: pass them unbound, as QEMU wants).")
    var prebound = false

    @Flag(name: .long, help: "Use the group path: a type1 container and group fds instead of iommufd and cdevs.")
    var container = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    /// Everything the arguments say, checked (host unit tests call this).
    struct Plan: Equatable {
        var addresses: [PCIAddress]
        var ioas: IOASChoice
        var hwpt: HWPTRequest?
        var maps: [MapRequest]
        var mode: Mode
        var bind: Bool
        var container: Bool

        enum Mode: Equatable { case check, hold, exec([String]) }
    }

    func plan() throws(VFIOError) -> Plan {
        func usage(_ what: String, hint: String? = nil) -> VFIOError {
            .invalid(.step("attach"), what, remedies: hint.map { [.advice($0)] } ?? [])
        }
        guard !addresses.isEmpty else { throw usage("name at least one device (BDF)") }
        var list: [PCIAddress] = []
        for a in addresses {
            let p = try PCIAddress(parsing: a)
            if list.contains(p) { throw usage("\(p) is named twice") }
            list.append(p)
        }
        let ioasChoice = try IOASChoice(parsing: ioas)
        let hwptRequest = try hwpt.map { (t) throws(VFIOError) in try HWPTRequest(parsing: t) }
        var mapRequests: [MapRequest] = []
        for m in maps { mapRequests.append(try MapRequest(parsing: m)) }
        if hold && exec { throw usage("--hold and --exec exclude each other", hint: "--exec already keeps everything alive while the program runs") }
        if exec && program.isEmpty { throw usage("--exec needs a program after `--`", hint: "vfioctl attach BDF --exec -- PROGRAM ARGS...") }
        if prebound && !exec { throw usage("--prebound only applies to --exec (without --exec the devices are always bound and attached)") }
        if container {
            if ioasChoice != .new { throw usage("--ioas ID is an iommufd object; --container uses a type1 container") }
            if hwptRequest != nil { throw usage("--hwpt is an iommufd object; --container uses a type1 container") }
            if iommufdFD != nil { throw usage("--iommufd and --container exclude each other") }
            if prebound { throw usage("--prebound is for iommufd; with --container the device fd is always ready") }
        }
        let bind = container || !exec || prebound
        if hwptRequest != nil && !bind {
            throw usage("--hwpt needs a bound device, and --exec passes the device unbound",
                        hint: "add --prebound, or let the program allocate its HWPT itself")
        }
        return Plan(addresses: list, ioas: ioasChoice, hwpt: hwptRequest, maps: mapRequests,
                    mode: exec ? .exec(program) : (hold ? .hold : .check), bind: bind, container: container)
    }

    public func validate() throws {
        do { _ = try plan() } catch { throw ValidationError(CLIWording.message(error)) }
    }

    public func run() throws {
        let host = hostOptions.host
        let json = output.json
        var status: Int32 = 0
        try reporting(json: json) { () throws(VFIOError) in
            let plan = try self.plan()
            // In exec mode the report goes to stderr: stdout belongs to the program.
            var toStderr = false
            if case .exec = plan.mode { toStderr = true }
            func say(_ s: String) { if toStderr { CommandOutput.err(s) } else { CommandOutput.out(s) } }
            let session = AttachSession(plan: plan, host: host, inheritedIOMMUFD: iommufdFD)
            do throws(VFIOError) {
                try session.setUp()
                let report = try session.report()
                if json { say(JSON.render(report)) } else { report.textLines().forEach(say) }
                switch plan.mode {
                case .check:
                    try session.release()
                    if !json { say("released (a check: use --hold or --exec to keep the attachment)") }
                case .hold:
                    try Launcher.blockStopSignals()
                    let pid = Sys.getpid(Sys.current)
                    let line = "holding: pid \(pid); stop with `kill -TERM \(pid)` or Ctrl-C"
                    if json { CommandOutput.err(line) } else { CommandOutput.out(line) }
                    Sys.flushStandardStreams()
                    let sig = try Launcher.waitForStopSignal()
                    try session.release()
                    let done = "released after \(sig == SIGINT ? "SIGINT" : "SIGTERM")"
                    if json { CommandOutput.err(done) } else { CommandOutput.out(done) }
                case .exec(let argv):
                    Sys.flushStandardStreams()
                    let launcher = session.launcher()
                    status = try launcher.run(argv[0], Array(argv.dropFirst()))
                    try session.release()
                }
            } catch {
                session.releaseQuietly()
                throw error
            }
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// Boxes a noncopyable mapping so a list can hold it.
final class MappingBox {
    var mapping: DMAMapping?
    let iova: UInt64
    let length: UInt64
    let backing: MapRequest.Backing
    init(_ m: consuming DMAMapping, backing: MapRequest.Backing) {
        iova = m.iova
        length = m.length
        self.backing = backing
        mapping = consume m
    }
}

/// The objects of one `vfioctl attach`, created in order and released in the kernel's order.
final class AttachSession {
    let plan: AttachCommand.Plan
    let host: PCIHost
    let inheritedIOMMUFD: Int32?

    struct Device {
        var address: PCIAddress
        var cdev: String?
        var device: VFIODevice
        var deviceID: UInt32?
        var attachedID: UInt32?
        var hwInfo: IOMMUHardwareInfo?
    }

    var iommufd: IOMMUFD?
    var ioas: IOAS?
    var hwpt: HWPT?
    var vfioContainer: VFIOContainer?
    var groups: [VFIOGroup] = []
    var devices: [Device] = []
    var mappings: [MappingBox] = []

    init(plan: AttachCommand.Plan, host: PCIHost, inheritedIOMMUFD: Int32?) {
        self.plan = plan
        self.host = host
        self.inheritedIOMMUFD = inheritedIOMMUFD
    }

    func setUp() throws(VFIOError) {
        if plan.container { try setUpContainer() } else { try setUpIOMMUFD() }
    }

    func setUpIOMMUFD() throws(VFIOError) {
        // Find every node before opening anything: a bad BDF changes nothing.
        var cdevs: [String] = []
        for a in plan.addresses { cdevs.append(try DeviceNodes.cdevPath(of: a, host: host)) }
        let ctx: IOMMUFD
        if let fd = inheritedIOMMUFD {
            ctx = IOMMUFD(adopting: try Launcher.adoptInherited(fd), label: "iommufd (inherited fd \(fd))")
        } else {
            ctx = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try IOMMUFD() }
        }
        iommufd = ctx
        for (a, cdev) in zip(plan.addresses, cdevs) {
            let d = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try VFIODevice.open(cdev: cdev) }
            devices.append(Device(address: a, cdev: cdev, device: d))
        }
        if plan.bind {
            for i in devices.indices {
                do throws(VFIOError) {
                    devices[i].deviceID = try devices[i].device.bind(to: ctx)
                } catch {
                    throw host.explainOwnership(error, device: devices[i].address)
                }
            }
        }
        switch plan.ioas {
        case .new: ioas = try IOAS(ctx)
        case .existing(let id): ioas = try IOAS(existing: id, in: ctx)
        }
        guard let ioas else { return }
        if let req = plan.hwpt, let first = devices.first?.deviceID {
            hwpt = try HWPT(ioas: ioas, device: first, flags: req.flags)
        }
        if plan.bind {
            let target: any IOMMUAttachTarget = hwpt ?? ioas
            for i in devices.indices {
                devices[i].attachedID = try devices[i].device.attach(to: target)
                if let id = devices[i].deviceID { devices[i].hwInfo = try? ctx.hardwareInfo(device: id) }
            }
        }
        if !plan.maps.isEmpty {
            let ranges = try ioas.iovaRanges()
            // Fixed IOVAs first, so a kernel-chosen one cannot take their place.
            for m in plan.maps.filter({ $0.iova != nil }) + plan.maps.filter({ $0.iova == nil }) {
                if let iova = m.iova { try AttachSession.check(m, iova: iova, ranges: ranges.ranges, alignment: ranges.alignment) }
                let buffer = try DMABuffer(length: Int(m.size), backing: m.backing.dmaBacking)
                if m.backing == .memfd {
                    mappings.append(MappingBox(try ioas.mapFile(buffer, at: m.iova), backing: m.backing))
                } else {
                    mappings.append(MappingBox(try ioas.map(buffer, at: m.iova), backing: m.backing))
                }
            }
        }
    }

    func setUpContainer() throws(VFIOError) {
        var numbers: [Int] = []
        for a in plan.addresses { numbers.append(try DeviceNodes.groupNumber(of: a, host: host)) }
        let c = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try VFIOContainer() }
        vfioContainer = c
        for (a, n) in zip(plan.addresses, numbers) where !groups.contains(where: { $0.number == n }) {
            let g = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try VFIOGroup(number: n, host: host) }
            groups.append(g)
            do throws(VFIOError) { try g.setContainer(c) } catch { throw host.explainOwnership(error, device: a, group: n) }
        }
        do throws(VFIOError) {
            try c.setIOMMU(try c.supports(.type1v2) ? .type1v2 : .type1)
        } catch {
            throw host.explainOwnership(error, device: plan.addresses.first, group: numbers.first)
        }
        for (a, n) in zip(plan.addresses, numbers) {
            let g = groups.first { $0.number == n }!
            devices.append(Device(address: a, cdev: nil, device: try g.device(a.description)))
        }
        if !plan.maps.isEmpty {
            let info = try c.info()
            let ranges = info.iovaRanges ?? [0...UInt64.max]
            let alignment = info.pageSizes.map { $0 & (~$0 &+ 1) } ?? MapRequest.page
            let iovas = try AttachSession.containerIOVAs(for: plan.maps, ranges: ranges, alignment: alignment)
            for (m, iova) in zip(plan.maps, iovas) {
                let buffer = try DMABuffer(length: Int(m.size), backing: m.backing.dmaBacking)
                mappings.append(MappingBox(try c.mapDMA(buffer, at: iova), backing: m.backing))
            }
        }
    }

    /// The IOVA of each `--map` on a type1 container, in order, each checked
    /// against the usable ranges: fixed ones as asked; type1 has no
    /// kernel-chosen IOVAs, so the others go after every fixed one, from 1 MiB.
    static func containerIOVAs(for maps: [MapRequest], ranges: [ClosedRange<UInt64>], alignment: UInt64)
        throws(VFIOError) -> [UInt64]
    {
        // Every number here may sit at the top of the 64-bit space (--map 4K@0xfffffffffffff000):
        // `cursor` is the first free IOVA after the fixed maps, nil when they end at 2^64.
        func noRoom(_ m: MapRequest) -> VFIOError {
            .invalid(.step("map \(m)"), "no room for it: type1 needs an explicit IOVA, and vfioctl places maps without one "
                     + "after the fixed ones, which reach the end of the 64-bit IOVA space",
                     remedies: [.advice("give it an IOVA (SIZE@IOVA) inside a usable range (" + AttachReport.rangesText(ranges) + ")")])
        }
        func alignUp(_ v: UInt64, _ a: UInt64) -> UInt64? {
            let (x, o) = v.addingReportingOverflow(a - 1)
            return o ? nil : x / a * a
        }
        var cursor: UInt64? = 0x10_0000
        for m in maps {
            guard let fixed = m.iova else { continue }
            let (end, o) = fixed.addingReportingOverflow(m.size)
            if o { cursor = nil } else if let c = cursor { cursor = max(c, end) }
        }
        var out: [UInt64] = []
        for m in maps {
            let iova: UInt64
            if let fixed = m.iova {
                iova = fixed
            } else {
                let align = m.backing == .huge ? UInt64(DMABuffer.hugePageSize) : max(alignment, MapRequest.page)
                guard var c = cursor.flatMap({ alignUp($0, align) }) else { throw noRoom(m) }
                if let r = ranges.first(where: { $0.upperBound >= c && $0.upperBound - c >= m.size - 1 }),
                   r.lowerBound > c {
                    guard let moved = alignUp(r.lowerBound, align) else { throw noRoom(m) }
                    c = moved
                }
                iova = c
                let (end, o) = c.addingReportingOverflow(m.size)
                cursor = o ? nil : end
            }
            try check(m, iova: iova, ranges: ranges, alignment: alignment)
            out.append(iova)
        }
        return out
    }

    static func check(_ m: MapRequest, iova: UInt64, ranges: [ClosedRange<UInt64>], alignment: UInt64) throws(VFIOError) {
        if alignment > 0, iova % alignment != 0 || m.size % alignment != 0 {
            throw VFIOError.invalid(.step("map \(m)"), "IOVA 0x\(String(iova, radix: 16)) and size \(m.size) must be multiples of the "
                                    + "IOVA alignment, \(formatBytes(alignment))", remedies: [.advice("pick an aligned IOVA, or leave @IOVA out")])
        }
        let (last, overflow) = iova.addingReportingOverflow(m.size - 1)
        if overflow || !ranges.contains(where: { $0.contains(iova) && $0.contains(last) }) {
            throw VFIOError.invalid(.step("map \(m)"), "0x\(String(iova, radix: 16))-" + (overflow ? "past 2^64" : "0x" + String(last, radix: 16)) + " is not inside one "
                                    + "usable IOVA range (" + AttachReport.rangesText(ranges) + ")",
                                    remedies: [.advice("the ranges exclude reserved regions (MSI window, apertures): pick an IOVA "
                                                       + "inside one")])
        }
    }

    // MARK: report

    func report() throws(VFIOError) -> AttachReport {
        var r = AttachReport(mode: plan.container ? "container" : "iommufd")
        if case .exec = plan.mode, !plan.container { r.handoff = plan.bind ? "prebound" : "unbound" }
        if let iommufd { r.iommufd = .init(fd: iommufd.fd.numberForHandoff) }
        if let ioas {
            let ranges = try ioas.iovaRanges()
            r.ioas = .init(id: ioas.objectID, created: ioas.isOwned,
                           iovaRanges: ranges.ranges.map { .init(start: $0.lowerBound, last: $0.upperBound) },
                           iovaAlignment: ranges.alignment)
        }
        if let hwpt { r.hwpt = .init(id: hwpt.objectID, flags: HWPTRequest.flagNames(hwpt.flags)) }
        if let c = vfioContainer {
            let info = try c.info()
            r.container = .init(fd: c.fd.numberForHandoff, iommuType: c.type?.description ?? "none",
                                iovaRanges: (info.iovaRanges ?? []).map { .init(start: $0.lowerBound, last: $0.upperBound) },
                                pageSizes: info.pageSizes)
            r.groups = groups.map { .init(number: $0.number, fd: $0.fd.numberForHandoff) }
        }
        r.devices = devices.map {
            .init(address: $0.address.description, cdev: $0.cdev, fd: $0.device.fd.numberForHandoff, deviceID: $0.deviceID,
                  attachedID: $0.attachedID, hwInfo: $0.hwInfo.map(HWInfoReport.init))
        }
        r.mappings = mappings.map { .init(iova: $0.iova, length: $0.length, backing: $0.backing.rawValue) }
        r.cacheCoherency = cacheCoherency()
        return r
    }

    /// VFIO_DMA_CC_IOMMU for what was attached: the container's domains, or
    /// the HWPTs on the IOAS (through iommufd's compat check). Unknown, with
    /// the reason, when nothing is attached or the kernel would not say.
    func cacheCoherency() -> CacheCoherency {
        do throws(VFIOError) {
            if let c = vfioContainer { return try c.cacheCoherency() }
            guard let ioas else { return .unknown("no IOAS") }
            guard devices.contains(where: { $0.attachedID != nil }) else {
                return .unknown("no device is attached (--exec hands the devices over unbound; the program attaches them)")
            }
            if inheritedIOMMUFD != nil {
                // Asking sets the context's compat IOAS for a moment; in a shared context that is another process's too.
                return .unknown("the iommufd is shared (--iommufd): vfioctl does not touch its compat IOAS to ask")
            }
            return try ioas.cacheCoherency()
        } catch {
            return .unknown(CLIWording.message(error))
        }
    }

    // MARK: exec

    func launcher() -> Launcher {
        var fds: [(name: String, fd: Int32)] = []
        var values: [(name: String, value: String)] = []
        var env: [String: String] = [:]
        func envName(_ a: PCIAddress) -> String {
            a.description.replacingOccurrences(of: ":", with: "_").replacingOccurrences(of: ".", with: "_")
        }
        env["VFIOKIT_HANDOFF"] = plan.container ? "container" : (plan.bind ? "prebound" : "unbound")
        if let iommufd {
            fds.append(("iommufd", iommufd.fd.numberForHandoff))
            env["VFIOKIT_IOMMUFD_FD"] = String(iommufd.fd.numberForHandoff)
        }
        if let c = vfioContainer {
            fds.append(("container", c.fd.numberForHandoff))
            env["VFIOKIT_CONTAINER_FD"] = String(c.fd.numberForHandoff)
            for g in groups {
                fds.append(("group:\(g.number)", g.fd.numberForHandoff))
                env["VFIOKIT_GROUP_FD_\(g.number)"] = String(g.fd.numberForHandoff)
            }
            if let first = devices.first, let g = first.device.group {
                fds.append(("group", g.fd.numberForHandoff))
                env["VFIOKIT_GROUP_FD"] = String(g.fd.numberForHandoff)
            }
        }
        for (i, d) in devices.enumerated() {
            let fd = d.device.fd.numberForHandoff
            fds.append(("device:\(d.address)", fd))
            env["VFIOKIT_DEVICE_FD_\(envName(d.address))"] = String(fd)
            if let id = d.deviceID {
                values.append(("devid:\(d.address)", String(id)))
                env["VFIOKIT_DEVICE_ID_\(envName(d.address))"] = String(id)
            }
            if i == 0 {
                fds.append(("device", fd))
                env["VFIOKIT_DEVICE_FD"] = String(fd)
                env["VFIOKIT_DEVICE_BDF"] = d.address.description
                values.append(("bdf", d.address.description))
                if let id = d.deviceID {
                    values.append(("devid", String(id)))
                    env["VFIOKIT_DEVICE_ID"] = String(id)
                }
            }
        }
        if let ioas {
            values.append(("ioas", String(ioas.objectID)))
            env["VFIOKIT_IOAS_ID"] = String(ioas.objectID)
        }
        if let hwpt {
            values.append(("hwpt", String(hwpt.objectID)))
            env["VFIOKIT_HWPT_ID"] = String(hwpt.objectID)
        }
        return Launcher(fds: fds, values: values, environment: env)
    }

    // MARK: release

    /// Releases in the kernel's order, reporting the first error: detach every
    /// device, unmap, close the devices, destroy the HWPT and the IOAS (when
    /// created here), close the groups, the container, the iommufd.
    func release() throws(VFIOError) {
        var first: VFIOError?
        func step(_ body: () throws(VFIOError) -> Void) {
            do { try body() } catch { if first == nil { first = error } }
        }
        for d in devices where d.attachedID != nil && !d.device.isClosed {
            step { () throws(VFIOError) in try d.device.detach() }
        }
        for box in mappings {
            guard let m = box.mapping.take() else { continue }
            do { try m.unmap() } catch { if first == nil { first = error } }
        }
        mappings = []
        for d in devices { step { () throws(VFIOError) in try d.device.close() } }
        devices = []
        if let hwpt { step { () throws(VFIOError) in try hwpt.destroy() } }
        hwpt = nil
        if let ioas, ioas.isOwned { step { () throws(VFIOError) in try ioas.destroy() } }
        ioas = nil
        for g in groups { step { () throws(VFIOError) in try g.close() } }
        groups = []
        if let c = vfioContainer { step { () throws(VFIOError) in try c.close() } }
        vfioContainer = nil
        if let iommufd { step { () throws(VFIOError) in try iommufd.close() } }
        iommufd = nil
        if let first { throw first }
    }

    /// Releases what exists after a failure; the first failure is what the user sees.
    func releaseQuietly() { try? release() }
}

/// What `vfioctl attach` reports; the JSON keys are documented in its help.
struct AttachReport: Encodable {
    struct Range: Encodable { var start: UInt64; var last: UInt64 }
    struct FD: Encodable { var fd: Int32 }
    struct IOASInfo: Encodable {
        var id: UInt32
        var created: Bool
        var iovaRanges: [Range]
        var iovaAlignment: UInt64
        enum CodingKeys: String, CodingKey { case id, created, iovaRanges = "iova_ranges", iovaAlignment = "iova_alignment" }
    }
    struct HWPTInfo: Encodable { var id: UInt32; var flags: [String] }
    struct ContainerInfo: Encodable {
        var fd: Int32
        var iommuType: String
        var iovaRanges: [Range]
        var pageSizes: UInt64?
        enum CodingKeys: String, CodingKey { case fd, iommuType = "iommu_type", iovaRanges = "iova_ranges", pageSizes = "page_sizes" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(fd, forKey: .fd)
            try c.encode(iommuType, forKey: .iommuType)
            try c.encode(iovaRanges, forKey: .iovaRanges)
            try c.encode(pageSizes, forKey: .pageSizes)
        }
    }
    struct Group: Encodable { var number: Int; var fd: Int32 }
    struct DeviceInfo: Encodable {
        var address: String
        var cdev: String?
        var fd: Int32
        var deviceID: UInt32?
        var attachedID: UInt32?
        var hwInfo: HWInfoReport?
        enum CodingKeys: String, CodingKey {
            case address, cdev, fd
            case deviceID = "device_id", attachedID = "attached_id", hwInfo = "hw_info"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(address, forKey: .address)
            try c.encode(cdev, forKey: .cdev)
            try c.encode(fd, forKey: .fd)
            try c.encode(deviceID, forKey: .deviceID)
            try c.encode(attachedID, forKey: .attachedID)
            try c.encode(hwInfo, forKey: .hwInfo)
        }
    }
    struct Mapping: Encodable { var iova: UInt64; var length: UInt64; var backing: String }

    var mode: String
    var handoff: String?
    var iommufd: FD?
    var ioas: IOASInfo?
    var hwpt: HWPTInfo?
    var container: ContainerInfo?
    var groups: [Group] = []
    var devices: [DeviceInfo] = []
    var mappings: [Mapping] = []
    var cacheCoherency: CacheCoherency?

    init(mode: String) { self.mode = mode }

    enum CodingKeys: String, CodingKey {
        case mode, handoff, iommufd, ioas, hwpt, container, groups, devices, mappings
        case cacheCoherency = "cache_coherency"
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(mode, forKey: .mode)
        try c.encode(handoff, forKey: .handoff)
        try c.encode(iommufd, forKey: .iommufd)
        try c.encode(ioas, forKey: .ioas)
        try c.encode(hwpt, forKey: .hwpt)
        try c.encode(container, forKey: .container)
        try c.encode(groups, forKey: .groups)
        try c.encode(devices, forKey: .devices)
        try c.encode(mappings, forKey: .mappings)
        try c.encode(cacheCoherency, forKey: .cacheCoherency)
    }

    static func rangesText(_ ranges: [ClosedRange<UInt64>]) -> String {
        ranges.isEmpty ? "none" : ranges.map { "0x\(String($0.lowerBound, radix: 16))-0x\(String($0.upperBound, radix: 16))" }
            .joined(separator: ", ")
    }

    func textLines() -> [String] {
        var rows: [[String]] = []
        if let iommufd { rows.append(["iommufd", "/dev/iommu (fd \(iommufd.fd))"]) }
        if let ioas {
            rows.append(["IOAS", "\(ioas.id)" + (ioas.created ? " (new)" : " (existing)")])
        }
        if let hwpt { rows.append(["HWPT", "\(hwpt.id)" + (hwpt.flags.isEmpty ? " (paging)" : " (" + hwpt.flags.joined(separator: ", ") + ")")]) }
        if let ioas {
            rows.append(["IOVA ranges", AttachReport.rangesText(ioas.iovaRanges.map { $0.start...$0.last })])
            rows.append(["IOVA alignment", formatBytes(ioas.iovaAlignment)])
        }
        if let c = container {
            rows.append(["container", "/dev/vfio/vfio (fd \(c.fd)), \(c.iommuType)"])
            rows.append(["groups", groups.map { "/dev/vfio/\($0.number) (fd \($0.fd))" }.joined(separator: ", ")])
            rows.append(["IOVA ranges", AttachReport.rangesText(c.iovaRanges.map { $0.start...$0.last })])
            if let p = c.pageSizes {
                rows.append(["page sizes", (0..<64).filter { p & (1 << UInt64($0)) != 0 }.map { formatBytes(1 << UInt64($0)) }.joined(separator: ", ")])
            }
        }
        if let cc = cacheCoherency { rows.append(["cache coherency", cc.text]) }
        if let handoff {
            rows.append(["handoff", handoff == "unbound" ? "device fds unbound (the program binds them)" : "devices bound and attached"])
        }
        var out = table(["", ""], rows).split(separator: "\n").dropFirst().map(String.init)
        out.append("")
        out.append(contentsOf: table(["DEVICE", "NODE", "FD", "DEVID", "ATTACHED TO"], devices.map {
            [$0.address, $0.cdev ?? "group", "\($0.fd)", $0.deviceID.map(String.init) ?? "-",
             $0.attachedID.map { "HWPT \($0)" + ($0 == hwpt?.id ? "" : " (the kernel's, on IOAS \(ioas?.id ?? 0))") } ?? (mode == "container" ? "container" : "not attached")]
        }).split(separator: "\n").map(String.init))
        for d in devices {
            guard let h = d.hwInfo else { continue }
            out.append("")
            out.append("IOMMU behind \(d.address):")
            out.append(contentsOf: h.textLines().map { "  " + $0 })
        }
        out.append("")
        if mappings.isEmpty {
            out.append("mappings: none (--map SIZE[@IOVA] adds some)")
        } else {
            out.append(contentsOf: table(["IOVA", "LAST", "LENGTH", "BACKING"], mappings.map {
                ["0x" + String($0.iova, radix: 16), "0x" + String($0.iova + $0.length - 1, radix: 16), formatBytes($0.length), $0.backing]
            }).split(separator: "\n").map(String.init))
        }
        return out
    }
}
