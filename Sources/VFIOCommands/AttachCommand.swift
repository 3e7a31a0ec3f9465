import ArgumentParser
import VFIOKit
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

// `vfioctl attach`, in files of one job each: this one (the arguments and
// what each mode does), AttachPlan.swift (the arguments checked),
// AttachSession.swift (opening, mapping and releasing in the kernel's
// order), AttachHandoff.swift (the fds and ids handed to --exec's program)
// and AttachReport.swift (what is printed).

/// `vfioctl attach BDF|UUID... [--vf-token UUID] [--ioas new|ID] [--hwpt FLAGS] [--map SIZE[@IOVA]]... [--hold | --exec -- PROGRAM ARGS...]`.
public struct AttachCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Attach devices to an IOMMU address space: check it, hold it, or hand the ready fds to a program.",
        discussion: """
            Opens /dev/iommu (a new iommufd context), opens each device's VFIO cdev \
            (/dev/vfio/devices/vfioN, found in sysfs), binds it (VFIO_DEVICE_BIND_IOMMUFD, \
            with the VF token of --vf-token for an SR-IOV VF), \
            allocates an IOAS (--ioas new, the default) or uses an existing one (--ioas ID, \
            only meaningful in an iommufd shared with you: --iommufd FD), optionally \
            allocates a HWPT on it (--hwpt paging|nest-parent|dirty-tracking, flags joined \
            with commas), attaches every device, maps the buffers asked for with --map \
            (memory vfioctl allocates; SIZE takes K/M/G; @IOVA fixes the address, otherwise \
            the kernel chooses; ,memfd maps a memfd with IOMMU_IOAS_MAP_FILE, ,huge uses \
            2 MiB pages), maps ranges of device BARs asked for with --map-bar \
            BDF/BAR[+OFFSET],SIZE[@IOVA] (peer-to-peer DMA: the BAR range is exported as a \
            dma-buf, VFIO_DEVICE_FEATURE_DMA_BUF, and mapped with IOMMU_IOAS_MAP_FILE; the \
            device may be one of those attached, or another bound to vfio-pci, which is then \
            opened and bound but not attached; iommufd only), and reports: device ids, IOAS id, HWPT id, usable IOVA ranges \
            and alignment (IOMMU_IOAS_IOVA_RANGES), the IOMMU's hardware info \
            (IOMMU_GET_HW_INFO), every mapping, and whether the IOMMU enforces cache \
            coherency (blocks no-snoop DMA, so a VM needs no wbinvd emulation): \
            VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU) on the container, or on /dev/iommu \
            with the IOAS as its compat IOAS (IOMMU_VFIO_IOAS); reported, never changed.

            A device is a PCI function bound to vfio-pci (DDDD:BB:DD.F or BB:DD.F) or a \
            mediated device by its UUID (`vfioctl mdev create` makes one; on the iommufd \
            path its parent driver reaches the IOAS through an access, so it is attached to \
            the IOAS itself, no HWPT; on the group path its group is its own and the device \
            is opened by UUID). An SR-IOV VF of a PF bound to vfio-pci opens only with the \
            PF's VF token (`vfioctl bind PF --sriov N --vf-token UUID` sets it): --vf-token \
            UUID presents it (VFIO_DEVICE_BIND_IOMMUFD's token, or "BDF vf_token=UUID" for \
            VFIO_GROUP_GET_DEVICE_FD) to each VF named whose PF is on vfio-pci and to each \
            SR-IOV PF named; a VF opened without it or with another is refused (EACCES) \
            with what it needs.

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
            VFIOKIT_DEVICE_FD_<BDF> (with : and . as _, e.g. VFIOKIT_DEVICE_FD_0000_00_03_0; \
            an mdev's UUID with - as _), VFIOKIT_DEVICE_BDF (the first device's BDF or UUID), VFIOKIT_IOAS_ID, VFIOKIT_HWPT_ID, VFIOKIT_DEVICE_ID and \
            VFIOKIT_DEVICE_ID_<BDF> (--prebound), VFIOKIT_HANDOFF (unbound or prebound); \
            with --container VFIOKIT_CONTAINER_FD, VFIOKIT_GROUP_FD, VFIOKIT_GROUP_FD_<N>.

            --container uses the group path instead: /dev/vfio/vfio as a type1 \
            container, /dev/vfio/N for each device's group (every member must be bound \
            to vfio-pci), VFIO_GROUP_GET_DEVICE_FD; --map without @IOVA gets an address \
            from VFIOKit's IOVA allocator (type1 has no kernel-chosen IOVAs): the lowest \
            free one in a usable range, aligned to the IOMMU page size (2 MiB for ,huge).

            With --exec the report goes to stderr (stdout is the program's); with --hold \
            and --json the "holding" line goes to stderr.

            JSON (--json): {"mode": "iommufd"|"container", "handoff": "unbound"|"prebound"|null, \
            "iommufd": {"fd"} or null, "ioas": {"id", "created", "iova_ranges": [{"start", \
            "last"}], "iova_alignment"} or null, "hwpt": {"id", "flags"} or null, \
            "container": {"fd", "iommu_type", "iova_ranges", "page_sizes"} or null, \
            "groups": [{"number", "fd"}], "devices": [{"address" (a BDF, or an mdev's UUID), "cdev", "fd", \
            "device_id", "attached_id", "hw_info"}], "mappings": [{"iova", "length", \
            "backing"}] (backing: anonymous, memfd, huge, or "bar BDF/BAR[+0xOFFSET]" for \
            --map-bar), "cache_coherency": {"enforced" (true, false or null), "query", \
            "meaning"}}. Numbers are integers; device_id, attached_id (the HWPT the \
            kernel attached the device to) and hw_info are null when the device was not \
            bound; hw_info is as in `vfioctl hw-info --json`.

            Examples:
              vfioctl attach 0000:00:03.0 --ioas new
              vfioctl attach 00:03.0 --map 2M --map 64K@0x100000 --json
              vfioctl attach 00:03.0 --hwpt nest-parent --hold
              vfioctl attach 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 --map 64K --json
              vfioctl attach 0000:01:00.1 --vf-token 52ac9bff-3a88-4fbd-901a-0d767c3b6c97 --container
              vfioctl attach 00:03.0 --map 8K@0x100000 --map-bar 01:01.0/0,4K@0x200000 --prebound --exec -- vfiokit-edu-dma --peer-iova 0x200000
              vfioctl attach 00:03.0 --exec -- qemu-system-x86_64 -M q35 ... \\
                  -object iommufd,id=iommufd0,fd={iommufd} -device vfio-pci,fd={device},iommufd=iommufd0
              vfioctl attach 00:03.0 --prebound --exec -- vfiokit-edu-dma
              vfioctl attach 00:03.0 --container --exec -- my-driver --container-fd {container} --group-fd {group}
            """)

    @Argument(help: "The devices: DDDD:BB:DD.F or BB:DD.F, bound to vfio-pci, or an mdev's UUID.")
    var addresses: [String] = []

    @Option(name: .customLong("vf-token"), help: ArgumentHelp("The VF token (set on the PF) an SR-IOV VF of a PF on vfio-pci opens with.", valueName: "UUID"))
    var vfToken: String?

    @Option(name: .long, help: ArgumentHelp("`new` to allocate an IOAS, or the id of one in a shared iommufd.", valueName: "new|ID"))
    var ioas: String = "new"

    @Option(name: .long, help: ArgumentHelp("Allocate a HWPT on the IOAS and attach to it: `paging` or flags nest-parent,dirty-tracking.", valueName: "paging|FLAGS"))
    var hwpt: String?

    @Option(name: .customLong("map"), help: ArgumentHelp("Map a buffer vfioctl allocates (repeatable).", valueName: "SIZE[@IOVA][,BACKING]"))
    var maps: [String] = []

    @Option(name: .customLong("map-bar"), help: ArgumentHelp("Map a range of a device's BAR, exported as a dma-buf, for peer-to-peer DMA (repeatable; iommufd only).", valueName: "BDF/BAR[+OFFSET],SIZE[@IOVA]"))
    var barMaps: [String] = []

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

    public func validate() throws {
        do { _ = try AttachPlan(self) } catch { throw ValidationError(CLIWording.message(error)) }
    }

    public func run() throws {
        let host = hostOptions.host
        let json = output.json
        var status: Int32 = 0
        try reporting(json: json) { () throws(VFIOError) in
            let plan = try AttachPlan(self)
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

