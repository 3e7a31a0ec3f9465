import ArgumentParser
import VFIOKit

/// `vfioctl doctor [BDF] [--memlock SIZE] [--json]`.
public struct DoctorCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check everything between this host and a working VFIO setup, and say how to fix it.",
        discussion: """
            Checks: the IOMMU (present, enabled), interrupt remapping (from /proc/interrupts: \
            IR- irqchips mean on; virtio-iommu never remaps), the allow_unsafe_interrupts \
            parameters of iommufd and vfio_iommu_type1 (reported, never set), /dev/iommu \
            and which iommufd ioctls the kernel has (each probed with a zero-size argument: \
            EINVAL means present, ENOTTY missing), /dev/vfio/vfio, VFIO cdev support, the \
            vfio-pci driver, RLIMIT_MEMLOCK (against --memlock SIZE when given), \
            vfio_iommu_type1.dma_entry_limit, huge pages, and the groups of devices on \
            vfio-pci, and whether the IOMMUs will enforce cache coherency (block no-snoop \
            DMA: VT-d with ECAP.SC, AMD-Vi always, virtio-iommu never). With a BDF: that \
            device's group viability, driver, users, the processes holding its group, the \
            permissions of its /dev/vfio nodes, and — on vfio-pci — the kernel's own answer \
            on cache coherency (VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU), the device opened, \
            bound and attached to an empty IOAS for the question, then closed).

            Each finding has a status: ok, info, warn or fail, and a fix. Exit status 1 \
            when any finding is fail. Nothing is changed.

            JSON (--json): {"findings": [FINDING], "worst": STATUS} where FINDING has id, \
            status, title, detail, fix (null when nothing to do) and remedies (the fix as \
            data: each {"kind", ...} as in an error's remedies, see `vfioctl --help`).

            Examples:
              vfioctl doctor
              vfioctl doctor 0000:00:03.0
              vfioctl doctor --memlock 2G --json
            """)

    @Argument(help: "A device to check in detail: DDDD:BB:DD.F or BB:DD.F.")
    var address: String?

    @Option(name: .long, help: ArgumentHelp("Check RLIMIT_MEMLOCK against this many bytes (64M, 2G, ...).", valueName: "size"))
    var memlock: String?

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws {
        if let address { try validateAddress(address) }
        if let memlock, parseByteSize(memlock) == nil {
            throw ValidationError("--memlock \"\(memlock)\" is not a size; write bytes or a number with K, M, G or T (64M, 2G)")
        }
    }

    public func run() throws {
        let host = hostOptions.host
        var worst = DoctorFinding.Status.ok
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try address.map { (t: String) throws(VFIOError) in try PCIAddress(parsing: t) }
            // VFIOKit's doctor: the host's checks, and with a device on vfio-pci the kernel's own answer on
            // cache coherency (the device opened, bound and attached to an empty IOAS for the question).
            let findings = host.doctor(DoctorOptions(device: a, memlockBytes: memlock.flatMap(parseByteSize),
                                                     probeKernel: hostOptions.root == "/"))
            worst = findings.map(\.status).max() ?? .ok
            if output.json {
                struct Out: Encodable { var findings: [DoctorWording.Row]; var worst: DoctorFinding.Status }
                CommandOutput.out(JSON.render(Out(findings: findings.map(DoctorWording.Row.init), worst: worst)))
                return
            }
            let width = findings.map { DoctorWording.title($0).count }.max() ?? 10
            for f in findings {
                let tag = switch f.status {
                case .ok: "[ ok ]"
                case .info: "[info]"
                case .warn: "[warn]"
                case .fail: "[FAIL]"
                }
                let title = DoctorWording.title(f)
                CommandOutput.out("\(tag) \(title.padding(toLength: width, withPad: " ", startingAt: 0))  \(DoctorWording.detail(f))")
                if let fix = DoctorWording.fix(f), f.status == .warn || f.status == .fail {
                    CommandOutput.out(String(repeating: " ", count: width + 9) + "fix: " + fix)
                }
            }
            let fails = findings.filter { $0.status == .fail }.count
            let warns = findings.filter { $0.status == .warn }.count
            CommandOutput.out("")
            CommandOutput.out(fails == 0 && warns == 0 ? "all checks passed"
                              : "\(fails) failed, \(warns) warning\(warns == 1 ? "" : "s")")
        }
        if worst == .fail { throw ExitCode.failure }
    }
}
