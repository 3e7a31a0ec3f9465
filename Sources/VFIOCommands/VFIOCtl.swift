import ArgumentParser
import VFIOKit

/// `vfioctl`: inspect and prepare a Linux host for VFIO.
///
/// Subcommands are listed in ``VFIOCtl/subcommandTypes``; add a new one there
/// (one file per subcommand in this module).
public struct VFIOCtl: ParsableCommand {
    /// Every subcommand, in the order `vfioctl --help` lists them. Append new ones here.
    public static let subcommandTypes: [any ParsableCommand.Type] = [
        ListCommand.self,
        ShowCommand.self,
        BindCommand.self,
        UnbindCommand.self,
        DoctorCommand.self,
        ManualCommand.self,
        AttachCommand.self, ResetCommand.self, IRQsCommand.self, ConfigCommand.self, BarCommand.self, HWInfoCommand.self,
        MdevCommand.self,
    ]

    public static let configuration = CommandConfiguration(
        commandName: "vfioctl",
        abstract: "Inspect and prepare a Linux host for VFIO and iommufd userspace drivers.",
        discussion: """
            vfioctl lists PCI devices and IOMMU groups, explains why a device is or is not \
            usable through VFIO, binds devices to vfio-pci the safe way (driver_override and \
            drivers_probe, never new_id), gives them back to their original driver, and \
            checks the whole host (IOMMU, interrupt remapping, /dev nodes, permissions, \
            memlock) with `doctor`.

            Every command takes --json for machine-readable output with stable keys (see \
            each command's help). Exit status: 0 on success, 1 on failure (for doctor: \
            when any check fails), 64 for usage errors.

            Errors with --json: {"error": ERROR} where ERROR has message (the first line of \
            the text), operation (IOMMU_IOAS_MAP, open, bind), operation_kind (ioctl, \
            syscall or step), errno (a number or null), errno_name (ENOMEM or null), object, \
            detail, hint (the fix as printed) and remedies (the fix as data, in order). A \
            remedy is {"kind": KIND, ...}: \(ErrorJSON.remedyKeys).

            Examples:
              vfioctl list
              vfioctl list --groups
              vfioctl show 0000:00:03.0
              vfioctl bind 00:03.0
              vfioctl bind 0000:01:01.0 --group
              vfioctl unbind 0000:00:05.0 --restore
              vfioctl doctor --memlock 1G
              vfioctl --generate-completion-script bash > /etc/bash_completion.d/vfioctl
              vfioctl manual > vfioctl.1
            """,
        version: "0.1.0",
        subcommands: subcommandTypes
    )

    public init() {}

    /// Runs vfioctl with `arguments` (without the program name) in this
    /// process and returns its exit status; output goes to the task's
    /// ``CommandOutput`` (stdout/stderr unless a test captures it).
    public static func execute(_ arguments: [String]) -> Int32 {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            return 0
        } catch {
            let code = exitCode(for: error)
            if code.rawValue != 0 || !(error is ExitCode) {
                let msg = fullMessage(for: error)
                if !msg.isEmpty {
                    if code.rawValue == 0 { CommandOutput.out(msg) } else { CommandOutput.err(msg) }
                }
            }
            return code.rawValue
        }
    }
}
