import VFIOKit
import VFIOSystem

/// How vfioctl words VFIOKit's remedies: each as the exact command line that
/// carries it out (a `vfioctl ...` command, or a shell command for what
/// vfioctl does not do), in backticks, to be run as printed.
///
/// The library says what to do in plain words (`Remedy.description`); this
/// is the one place that turns a remedy into a vfioctl command. Every
/// `vfioctl` command line made here parses with vfioctl's own command tree
/// (`RemedyWordingTests`).
public enum CLIWording {
    /// The remedies as vfioctl prints them, for JSON encoders (`RemedyWording.key`).
    public static let wording = RemedyWording { text($0) }

    /// The command line that carries out `remedy`, when there is one.
    public static func command(_ remedy: Remedy) -> String? {
        switch remedy {
        case .bindToVFIO(let a?): "vfioctl bind \(a)"
        case .bindGroup(let a?): "vfioctl bind \(a) --group"
        case .bindBridgeToStub(let b, _): "vfioctl bind \(b) --driver pci-stub"
        case .forced(let r): command(r).map { $0 + " --force" }
        case .unbindDriver(let a): "vfioctl unbind \(a)"
        case .restoreDriver(let a): "vfioctl unbind \(a) --restore"
        case .stopProcesses(let ps): "kill " + ps.map { String($0.pid) }.joined(separator: " ")
        case .unmount(let points): points.map { "umount \(shellQuoted($0))" }.joined(separator: " && ")
        case .swapOff(let dev): "swapoff \(shellQuoted(dev))"
        case .stopStackedDevices(let names):
            names.map { $0.hasPrefix("md") ? "mdadm --stop /dev/\($0)" : "dmsetup remove /dev/\($0)" }.joined(separator: " && ")
        case .linkDown(let name): "ip link set \(shellQuoted(name)) down"
        case .raiseMemlock(let n?): "ulimit -l \(max(1, n / 1024))"
        case .showMemlock: "ulimit -l"
        case .reserveHugePages(let n, let pool): "echo \(n) > /sys/kernel/mm/hugepages/\(pool)/nr_hugepages"
        case .addHugePages(let n): "echo $(( $(cat /proc/sys/vm/nr_hugepages) + \(n) )) > /proc/sys/vm/nr_hugepages"
        case .grantAccess(let path, let uid?): "chown \(uid) \(shellQuoted(path))"
        case .takeOwnership(let path, let uid):
            "chown \(uid) \(shellQuoted(path)) && chmod 0755 \(shellQuoted(path))"
        case .restrictMode(let path): "chmod 0755 \(shellQuoted(path))"
        case .removeGroupWrite(let path): "chmod go-w \(shellQuoted(path))"
        case .removePath(let path, let recursive): "rm \(recursive ? "-r " : "")\(shellQuoted(path))"
        case .loadModule(let m): "modprobe \(m)"
        case .inspect(let path): "ls -l \(shellQuoted(path))"
        case .diagnose(let a): "vfioctl doctor" + (a.map { " \($0)" } ?? "")
        case .findHolder(let a?): "vfioctl show \(a)"
        case .findHolder(nil), .listDevices: "vfioctl list"
        case .rescanPCI: "echo 1 > /sys/bus/pci/rescan"
        case .listGroups: "vfioctl list --groups"
        case .showDevice(let a): "vfioctl show \(a)"
        case .hotReset(let a): "vfioctl reset \(a) --hot"
        case .bindToVFIO(nil), .bindGroup(nil), .raiseMemlock(nil), .grantAccess(_, nil), .runPrivileged, .moveConsole,
             .enableIOMMU, .enableInterruptRemapping, .allowUnsafeInterrupts, .kernelConfig, .newerKernel, .readKernelLog,
             .advice:
            nil
        }
    }

    /// Whether `remedy` is one step of a sequence ("run `a`, then `b`").
    static func isStep(_ remedy: Remedy) -> Bool {
        switch remedy {
        case .bindToVFIO(_?), .bindGroup(_?), .bindBridgeToStub, .unbindDriver, .restoreDriver: true
        default: false
        }
    }

    /// One remedy in vfioctl's words, its command in backticks.
    public static func phrase(_ remedy: Remedy) -> String {
        let cmd = command(remedy).map { "`\($0)`" } ?? ""
        switch remedy {
        case .bindToVFIO(_?), .bindGroup(_?), .bindBridgeToStub, .unbindDriver, .restoreDriver:
            return "run " + cmd
        case .bindToVFIO(nil):
            return "bind the device to vfio-pci (`vfioctl list` shows each device's address and what makes it ready; "
                + "vfioctl bind takes the address)"
        case .bindGroup(nil):
            return "bind the group's devices to vfio-pci (`vfioctl list --groups` shows its members; vfioctl bind takes "
                + "one of them with --group)"
        case .forced(let r):
            return command(r) == nil ? "or force it" : "or \(cmd) to take it anyway"
        case .stopProcesses(let ps):
            return "stop " + ps.map(\.description).joined(separator: ", ") + " or let \(ps.count == 1 ? "it" : "them")"
                + " release what \(ps.count == 1 ? "it holds" : "they hold") (\(cmd))"
        case .unmount, .swapOff, .linkDown:
            return cmd
        case .stopStackedDevices(let names):
            return "stop \(names.joined(separator: ", ")) (\(cmd))"
        case .moveConsole:
            return "boot with the console elsewhere (console= on the kernel command line)"
        case .raiseMemlock(let n?):
            return "raise it to at least \(formatBytes(n)): \(cmd) (KiB), limits.conf memlock, or systemd "
                + "LimitMEMLOCK=; or run with CAP_IPC_LOCK"
        case .raiseMemlock(nil):
            return "pinning memory for DMA counts against RLIMIT_MEMLOCK (`ulimit -l` shows it); raise it (limits.conf "
                + "memlock, systemd LimitMEMLOCK=) or map less"
        case .showMemlock:
            return "\(cmd) shows it"
        case .reserveHugePages(let n, _):
            return "huge pages make fewer, larger IOMMU mappings; to reserve \(n) of them: \(cmd)"
        case .addHugePages(let n):
            return "reserve \(n) more 2 MiB pages (as root): \(cmd) (/proc/meminfo HugePages_Free shows what is free)"
        case .grantAccess(_, let uid?):
            return "as root: \(cmd) (this user, uid \(uid)), or for good a udev rule (SUBSYSTEM==\"vfio\", OWNER=\"\(uid)\")"
        case .grantAccess(let path, nil):
            return "run as root, or give this user access to \(path) (a udev rule with OWNER=/GROUP=/MODE=, or chown)"
        case .takeOwnership:
            return "check who made it and its records; if they are yours: \(cmd)"
        case .restrictMode:
            return "check its records, then \(cmd)"
        case .removeGroupWrite, .removePath:
            return cmd
        case .loadModule:
            return cmd
        case .inspect:
            return "find out why it cannot be read (\(cmd))"
        case .diagnose:
            return "\(cmd) checks the host"
        case .findHolder(_?):
            return "\(cmd) names the holder"
        case .findHolder(nil):
            return "\(cmd) marks held devices; vfioctl show with one's address names the holder"
        case .rescanPCI:
            return "if the device was removed (sysfs remove) or hot-plugged since boot, rescan the PCI bus (as root): \(cmd)"
        case .listDevices:
            return "\(cmd) shows the devices there are"
        case .listGroups:
            return "\(cmd) shows the groups there are"
        case .showDevice:
            return "\(cmd) lists its regions"
        case .hotReset:
            return "a bus or slot hot reset may still work: \(cmd)"
        case .runPrivileged, .enableIOMMU, .enableInterruptRemapping, .allowUnsafeInterrupts, .kernelConfig, .newerKernel:
            return remedy.description
        case .readKernelLog(let words):
            return words.isEmpty ? "dmesg has the driver's error"
                : "the kernel log (dmesg | grep -i " + words.map { "-e \($0)" }.joined(separator: " ") + ") says why"
        case .advice(let text):
            return text
        }
    }

    /// The remedies as vfioctl prints them: consecutive steps as "run `a`,
    /// then `b`", the rest as their phrases, `; ` between. Nil for none.
    public static func text(_ remedies: [Remedy]) -> String? {
        guard !remedies.isEmpty else { return nil }
        var parts: [String] = []
        var run: [String] = []
        func flush() {
            if !run.isEmpty { parts.append("run " + run.map { "`\($0)`" }.joined(separator: ", then ")) }
            run = []
        }
        for r in remedies {
            if isStep(r), let c = command(r) {
                run.append(c)
            } else {
                flush()
                parts.append(phrase(r))
            }
        }
        flush()
        return parts.joined(separator: "; ")
    }

    /// The commands of `remedies` that carry them out, in order (for JSON `fix` lists).
    public static func commands(_ remedies: [Remedy]) -> [String] {
        remedies.compactMap(command)
    }

    /// An error as vfioctl prints it: the summary line, then the remedies in its words.
    public static func message(_ error: VFIOError) -> String {
        guard let hint = text(error.remedies) else { return error.summary }
        return error.summary + "\n  hint: " + hint
    }
}

/// `s` quoted for a POSIX shell when it needs it (`/mnt/my data` -> `'/mnt/my data'`).
func shellQuoted(_ s: String) -> String {
    let plain = s.unicodeScalars.allSatisfy { u in
        (u >= "a" && u <= "z") || (u >= "A" && u <= "Z") || (u >= "0" && u <= "9") || "/._-:+@%=)],".unicodeScalars.contains(u)
    }
    if plain && !s.isEmpty { return s }
    var out = "'"
    for ch in s { out += ch == "'" ? "'\\''" : String(ch) }
    return out + "'"
}
