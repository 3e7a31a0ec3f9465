import ArgumentParser

/// `vfioctl manual`: the man page, rendered from the argument parser's command tree.
public struct ManualCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "manual",
        abstract: "Print the vfioctl(1) man page (roff), generated from the command definitions.",
        discussion: """
            The page is built from the same definitions as --help, so it never drifts \
            from the tool. From a source checkout, ArgumentParser's plugin makes an \
            mdoc page the same way: `swift package generate-manual` writes \
            .build/plugins/GenerateManual/outputs/vfioctl/vfioctl.1.

            Examples:
              vfioctl manual > /usr/local/share/man/man1/vfioctl.1 && man vfioctl
              vfioctl manual | man -l -
            """)

    public init() {}

    public func run() throws {
        CommandOutput.out(Self.render())
    }

    /// The man page for `vfioctl` and every subcommand.
    public static func render() -> String {
        let root = VFIOCtl.configuration
        var s = ".TH VFIOCTL 1 \"\" \"vfioctl \(root.version)\" \"User Commands\"\n"
        s += ".SH NAME\nvfioctl \\- \(roff(root.abstract))\n"
        s += ".SH SYNOPSIS\n.B vfioctl\n.I subcommand\n[\\fIoptions\\fR]\n"
        s += ".SH DESCRIPTION\n" + paragraphs(root.discussion) + "\n"
        s += ".SH COMMANDS\n"
        for cmd in VFIOCtl.subcommandTypes {
            let c = cmd.configuration
            let name = c.commandName ?? "\(cmd)"
            s += ".SS \(name)\n\(roff(c.abstract))\n.PP\n"
            s += ".nf\n" + roff(VFIOCtl.helpMessage(for: cmd, columns: 78)) + "\n.fi\n"
        }
        s += ".SH SHELL COMPLETION\n.nf\nvfioctl --generate-completion-script bash\nvfioctl --generate-completion-script zsh\n"
        s += "vfioctl --generate-completion-script fish\n.fi\n"
        s += ".SH FILES\n.TP\n/run/vfiokit/bindings/BDF.json\nThe driver a device had before \\fBvfioctl bind\\fR.\n"
        s += ".SH EXIT STATUS\n0 on success, 1 on failure, 64 on a usage error.\n"
        return s
    }

    static func roff(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            var l = line.replacingOccurrences(of: "\\", with: "\\e")
            if l.hasPrefix(".") || l.hasPrefix("'") { l = "\\&" + l }
            return l
        }.joined(separator: "\n")
    }

    static func paragraphs(_ text: String) -> String {
        text.components(separatedBy: "\n\n").map { p -> String in
            p.hasPrefix("  ") || p.contains("\n  ") ? ".PP\n.nf\n" + roff(p) + "\n.fi" : ".PP\n" + roff(p)
        }.joined(separator: "\n")
    }
}

import Foundation
