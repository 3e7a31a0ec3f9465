/// What would fix a failure (or get a device ready), as a value.
///
/// The library never words a remedy as a command of a particular tool: its
/// ``description`` says what to do in plain words ("bind 0000:00:03.0 to
/// vfio-pci"), and a front end words it its own way (the command-line tool
/// prints each as its exact command line). ``VFIOError/remedies``
/// carries them in order: do the first, then the next.
public enum Remedy: Sendable, Hashable, CustomStringConvertible {
    // MARK: devices and drivers

    /// Bind the device to vfio-pci. Nil: the device is not known here (the
    /// list of devices gives each one's address and what makes it ready).
    case bindToVFIO(PCIAddress?)
    /// Bind every endpoint of the device's IOMMU group to vfio-pci (bridges
    /// stay as they are). Nil: the group's members are to be found first.
    case bindGroup(PCIAddress?)
    /// Bind a PCI bridge whose driver does not declare managed DMA (shpchp,
    /// say) to pci-stub, which does: a bridge never goes to vfio-pci.
    /// `driver` is the one it has now, which ``restoreDriver(_:)`` gives back.
    case bindBridgeToStub(PCIAddress, driver: String?)
    /// The bind or unbind remedy, taking the device anyway (in use, or its
    /// group not viable).
    indirect case forced(Remedy)
    /// Unbind the device from its driver (the record of its original driver stays).
    case unbindDriver(PCIAddress)
    /// Give the device back the driver it had before it was bound (from the
    /// record the bind kept).
    case restoreDriver(PCIAddress)

    // MARK: what uses a device

    /// Stop these processes, or let them release what they hold.
    case stopProcesses([RunningProcess])
    /// Unmount these mount points (a filesystem on the device).
    case unmount([String])
    /// Stop swapping on this block device (`/dev/nvme0n1p2`).
    case swapOff(String)
    /// Stop the device-mapper or md devices stacked on a block device (`dm-0`, `md127`).
    case stopStackedDevices([String])
    /// Take this network interface down.
    case linkDown(String)
    /// Move the console off the device (`console=` on the kernel command line).
    case moveConsole

    // MARK: limits, memory and access

    /// Raise `RLIMIT_MEMLOCK` (to at least this many bytes, when known), or
    /// run with `CAP_IPC_LOCK`; pinned DMA memory counts against it.
    case raiseMemlock(atLeast: UInt64?)
    /// Read `RLIMIT_MEMLOCK`.
    case showMemlock
    /// Reserve `count` huge pages of the pool `pool` (`hugepages-2048kB`, under /sys/kernel/mm/hugepages).
    case reserveHugePages(count: Int, pool: String)
    /// Reserve `count` more 2 MiB pages than are reserved now (/proc/sys/vm/nr_hugepages).
    case addHugePages(count: Int)
    /// Give this user (uid `uid`, or the user running) read and write access to a device node.
    case grantAccess(path: String, uid: UInt32?)
    /// Run with the privileges the operation needs (root, or CAP_SYS_RAWIO /
    /// CAP_IPC_LOCK), or from the process that owns the device.
    case runPrivileged
    /// A directory owned by someone else: after checking who made it and what
    /// it holds, make uid `uid` its owner and its mode 0755.
    case takeOwnership(path: String, uid: UInt32)
    /// A directory others may write: after checking what it holds, make its mode 0755.
    case restrictMode(path: String)
    /// Take group and other write permission away from a directory.
    case removeGroupWrite(path: String)
    /// Remove a file or directory VFIOKit will not trust.
    case removePath(String, recursive: Bool)

    // MARK: kernel and firmware

    /// Turn the IOMMU on: VT-d / AMD-Vi in the firmware, `intel_iommu=on` or
    /// `amd_iommu=on`; in a VM, an IOMMU device.
    case enableIOMMU
    /// Turn on interrupt remapping (or, under virtio-iommu, which cannot
    /// remap, use an IOMMU that can).
    case enableInterruptRemapping(virtioIOMMU: Bool)
    /// The module parameter that would let VFIO work without interrupt
    /// isolation (`iommufd.allow_unsafe_interrupts`): a security decision
    /// (a device could then forge interrupts) VFIOKit never takes.
    case allowUnsafeInterrupts(parameter: String)
    /// A kernel built with one of these options (`CONFIG_IOMMUFD`), in a
    /// release at least `since` when that matters.
    case kernelConfig([String], since: KernelVersion?)
    /// Load a kernel module (`vfio-pci`, `iommufd`, a driver to give back).
    case loadModule(String)
    /// A kernel that has these requests (the running one, `running`, lacks them).
    case newerKernel(lacking: [Request], running: String?)
    /// The kernel log has the reason (the lines matching these words, case-insensitive).
    case readKernelLog(matching: [String])

    // MARK: looking closer

    /// Look at a sysfs directory that could not be read.
    case inspect(path: String)
    /// Check the host's VFIO setup (IOMMU, interrupt remapping, nodes,
    /// limits, groups), for one device when given.
    case diagnose(PCIAddress?)
    /// Find the process that holds an IOMMU group (nil: any held device).
    case findHolder(PCIAddress?)
    /// List the PCI devices (with their readiness).
    case listDevices
    /// Rescan the PCI bus (as root, `/sys/bus/pci/rescan`): a device taken out
    /// through sysfs `remove` (or not yet enumerated) comes back.
    case rescanPCI
    /// List the IOMMU groups and their members.
    case listGroups
    /// Show one device (its regions, group, users).
    case showDevice(PCIAddress)
    /// Try a bus or slot hot reset of the device instead.
    case hotReset(PCIAddress)

    /// Advice with no command to it: an explanation of the cause, or a step
    /// in a program using the library (`call bind(to:) first`).
    case advice(String)

    /// A process, by pid and command (`/proc/PID/comm`).
    public struct RunningProcess: Sendable, Hashable, Codable, CustomStringConvertible {
        /// The process id.
        public var pid: Int32
        /// Its command name (`/proc/PID/comm`).
        public var command: String
        /// A process by pid and command.
        public init(pid: Int32, command: String) {
            self.pid = pid
            self.command = command
        }
        public var description: String { "pid \(pid) (\(command))" }
    }

    /// The remedy's kind: a stable name (`bind-to-vfio`), the `kind` key of its JSON.
    public enum Kind: String, Sendable, CaseIterable, Codable {
        /// `bind-to-vfio`: the kind of `Remedy.bindToVFIO`.
        case bindToVFIO = "bind-to-vfio"
        /// `bind-group`: the kind of `Remedy.bindGroup`.
        case bindGroup = "bind-group"
        /// `bind-bridge-to-stub`: the kind of `Remedy.bindBridgeToStub`.
        case bindBridgeToStub = "bind-bridge-to-stub"
        /// `forced`: the kind of `Remedy.forced`.
        case forced
        /// `unbind-driver`: the kind of `Remedy.unbindDriver`.
        case unbindDriver = "unbind-driver"
        /// `restore-driver`: the kind of `Remedy.restoreDriver`.
        case restoreDriver = "restore-driver"
        /// `stop-processes`: the kind of `Remedy.stopProcesses`.
        case stopProcesses = "stop-processes"
        /// `unmount`: the kind of `Remedy.unmount`.
        case unmount
        /// `swap-off`: the kind of `Remedy.swapOff`.
        case swapOff = "swap-off"
        /// `stop-stacked-devices`: the kind of `Remedy.stopStackedDevices`.
        case stopStackedDevices = "stop-stacked-devices"
        /// `link-down`: the kind of `Remedy.linkDown`.
        case linkDown = "link-down"
        /// `move-console`: the kind of `Remedy.moveConsole`.
        case moveConsole = "move-console"
        /// `raise-memlock`: the kind of `Remedy.raiseMemlock`.
        case raiseMemlock = "raise-memlock"
        /// `show-memlock`: the kind of `Remedy.showMemlock`.
        case showMemlock = "show-memlock"
        /// `reserve-huge-pages`: the kind of `Remedy.reserveHugePages`.
        case reserveHugePages = "reserve-huge-pages"
        /// `add-huge-pages`: the kind of `Remedy.addHugePages`.
        case addHugePages = "add-huge-pages"
        /// `grant-access`: the kind of `Remedy.grantAccess`.
        case grantAccess = "grant-access"
        /// `run-privileged`: the kind of `Remedy.runPrivileged`.
        case runPrivileged = "run-privileged"
        /// `take-ownership`: the kind of `Remedy.takeOwnership`.
        case takeOwnership = "take-ownership"
        /// `restrict-mode`: the kind of `Remedy.restrictMode`.
        case restrictMode = "restrict-mode"
        /// `remove-group-write`: the kind of `Remedy.removeGroupWrite`.
        case removeGroupWrite = "remove-group-write"
        /// `remove-path`: the kind of `Remedy.removePath`.
        case removePath = "remove-path"
        /// `enable-iommu`: the kind of `Remedy.enableIOMMU`.
        case enableIOMMU = "enable-iommu"
        /// `enable-interrupt-remapping`: the kind of `Remedy.enableInterruptRemapping`.
        case enableInterruptRemapping = "enable-interrupt-remapping"
        /// `allow-unsafe-interrupts`: the kind of `Remedy.allowUnsafeInterrupts`.
        case allowUnsafeInterrupts = "allow-unsafe-interrupts"
        /// `kernel-config`: the kind of `Remedy.kernelConfig`.
        case kernelConfig = "kernel-config"
        /// `load-module`: the kind of `Remedy.loadModule`.
        case loadModule = "load-module"
        /// `newer-kernel`: the kind of `Remedy.newerKernel`.
        case newerKernel = "newer-kernel"
        /// `read-kernel-log`: the kind of `Remedy.readKernelLog`.
        case readKernelLog = "read-kernel-log"
        /// `inspect`: the kind of `Remedy.inspect`.
        case inspect
        /// `diagnose`: the kind of `Remedy.diagnose`.
        case diagnose
        /// `find-holder`: the kind of `Remedy.findHolder`.
        case findHolder = "find-holder"
        /// `list-devices`: the kind of `Remedy.listDevices`.
        case listDevices = "list-devices"
        /// `rescan-pci`: the kind of `Remedy.rescanPCI`.
        case rescanPCI = "rescan-pci"
        /// `list-groups`: the kind of `Remedy.listGroups`.
        case listGroups = "list-groups"
        /// `show-device`: the kind of `Remedy.showDevice`.
        case showDevice = "show-device"
        /// `hot-reset`: the kind of `Remedy.hotReset`.
        case hotReset = "hot-reset"
        /// `advice`: the kind of `Remedy.advice`.
        case advice
    }

    /// The remedy's kind, without its facts (the `kind` key of its JSON).
    public var kind: Kind {
        switch self {
        case .bindToVFIO: .bindToVFIO
        case .bindGroup: .bindGroup
        case .bindBridgeToStub: .bindBridgeToStub
        case .forced: .forced
        case .unbindDriver: .unbindDriver
        case .restoreDriver: .restoreDriver
        case .stopProcesses: .stopProcesses
        case .unmount: .unmount
        case .swapOff: .swapOff
        case .stopStackedDevices: .stopStackedDevices
        case .linkDown: .linkDown
        case .moveConsole: .moveConsole
        case .raiseMemlock: .raiseMemlock
        case .showMemlock: .showMemlock
        case .reserveHugePages: .reserveHugePages
        case .addHugePages: .addHugePages
        case .grantAccess: .grantAccess
        case .runPrivileged: .runPrivileged
        case .takeOwnership: .takeOwnership
        case .restrictMode: .restrictMode
        case .removeGroupWrite: .removeGroupWrite
        case .removePath: .removePath
        case .enableIOMMU: .enableIOMMU
        case .enableInterruptRemapping: .enableInterruptRemapping
        case .allowUnsafeInterrupts: .allowUnsafeInterrupts
        case .kernelConfig: .kernelConfig
        case .loadModule: .loadModule
        case .newerKernel: .newerKernel
        case .readKernelLog: .readKernelLog
        case .inspect: .inspect
        case .diagnose: .diagnose
        case .findHolder: .findHolder
        case .listDevices: .listDevices
        case .rescanPCI: .rescanPCI
        case .listGroups: .listGroups
        case .showDevice: .showDevice
        case .hotReset: .hotReset
        case .advice: .advice
        }
    }

    /// The remedy in plain words, naming no tool's commands.
    public var description: String {
        switch self {
        case .bindToVFIO(let a?): "bind \(a) to vfio-pci"
        case .bindToVFIO(nil): "bind the device to vfio-pci (find its address in the list of devices)"
        case .bindGroup(let a?): "bind every endpoint of \(a)'s IOMMU group to vfio-pci"
        case .bindGroup(nil): "bind every member of the IOMMU group to vfio-pci (find them in the list of groups)"
        case .bindBridgeToStub(let b, let d):
            "bind the bridge \(b) to pci-stub, which manages DMA (a bridge never goes to vfio-pci)"
                + (d.map { "; restoring its original driver gives \($0) back" } ?? "")
        case .forced(let r): "\(r), forced (taking it anyway)"
        case .unbindDriver(let a): "unbind \(a) from its driver"
        case .restoreDriver(let a): "give \(a) its original driver back"
        case .stopProcesses(let ps):
            "stop " + ps.map(\.description).joined(separator: ", ") + " or let \(ps.count == 1 ? "it" : "them") release it"
        case .unmount(let points): "unmount " + points.joined(separator: ", ")
        case .swapOff(let dev): "stop swapping on \(dev)"
        case .stopStackedDevices(let names): "stop \(names.joined(separator: ", ")) (device-mapper, md or similar)"
        case .linkDown(let name): "take network interface \(name) down"
        case .moveConsole: "move the console to another device (console= on the kernel command line)"
        case .raiseMemlock(let n?):
            "raise RLIMIT_MEMLOCK to at least \(formatBytes(n)) (limits.conf memlock, systemd LimitMEMLOCK=), "
                + "or run with CAP_IPC_LOCK"
        case .raiseMemlock(nil):
            "pinning memory for DMA counts against RLIMIT_MEMLOCK; raise it (limits.conf memlock, systemd "
                + "LimitMEMLOCK=) or map less"
        case .showMemlock: "check RLIMIT_MEMLOCK (ulimit -l)"
        case .reserveHugePages(let n, let pool):
            "huge pages make fewer, larger IOMMU mappings; reserve \(n) in /sys/kernel/mm/hugepages/\(pool)/nr_hugepages"
        case .addHugePages(let n):
            "reserve \(n) more 2 MiB pages (as root, in /proc/sys/vm/nr_hugepages; /proc/meminfo HugePages_Free "
                + "shows what is free)"
        case .grantAccess(let path, let uid):
            "give \(uid.map { "uid \($0)" } ?? "this user") read and write access to \(path) (as root: its owner, "
                + "or a udev rule)"
        case .runPrivileged:
            "this needs privileges (CAP_SYS_RAWIO/CAP_IPC_LOCK or root) or the device is not owned by this process"
        case .takeOwnership(let path, let uid):
            "check who made \(path) and its records; if they are yours, make uid \(uid) its owner and its mode 0755"
        case .restrictMode(let path): "check the records in \(path), then make its mode 0755"
        case .removeGroupWrite(let path): "take group and other write permission away from \(path)"
        case .removePath(let path, _): "remove \(path)"
        case .enableIOMMU:
            "enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD); "
                + "in a VM add an IOMMU device (QEMU: -device intel-iommu,intremap=on)"
        case .enableInterruptRemapping(true):
            "virtio-iommu cannot remap interrupts; use an IOMMU that can (QEMU: -device intel-iommu,intremap=on)"
        case .enableInterruptRemapping(false):
            "enable interrupt remapping (x2APIC and intremap=on; in firmware: VT-d/AMD-Vi with interrupt remapping)"
        case .allowUnsafeInterrupts(let p):
            "allowing unsafe interrupts instead (\(p)=1) is a security decision (a device could then forge "
                + "interrupts): VFIOKit never sets it"
        case .kernelConfig(let options, let since):
            "the kernel needs " + options.joined(separator: " or ") + (since.map { " (Linux \($0) or later)" } ?? "")
        case .loadModule(let m): "load the \(m) module"
        case .newerKernel(let requests, let running):
            "this kernel" + (running.map { " (\($0))" } ?? "") + " lacks "
                + requests.map { "\($0.name) (added in Linux \($0.introduced))" }.joined(separator: ", ")
                + "; a newer kernel has " + (requests.count == 1 ? "it" : "them")
        case .readKernelLog(let words):
            "the kernel log (dmesg" + (words.isEmpty ? "" : " lines with " + words.joined(separator: ", ")) + ") says why"
        case .inspect(let path): "find out why \(path) cannot be read"
        case .diagnose(let a?): "check the host's VFIO setup for \(a)"
        case .diagnose(nil): "check the host's VFIO setup (IOMMU, interrupt remapping, nodes, limits)"
        case .findHolder(let a?): "find the process that holds \(a)'s IOMMU group"
        case .findHolder(nil): "find the process that holds the IOMMU group (the list of devices marks held ones)"
        case .listDevices: "list the PCI devices there are"
        case .rescanPCI:
            "if the device was removed (sysfs remove) or hot-plugged since boot, rescan the PCI bus (as root, write 1 "
                + "to /sys/bus/pci/rescan) to bring it back"
        case .listGroups: "list the IOMMU groups there are"
        case .showDevice(let a): "look at \(a)'s regions and group"
        case .hotReset(let a): "a bus or slot hot reset of \(a) may still work"
        case .advice(let text): text
        }
    }

    /// Remedies in plain words, joined (`; `).
    public static func describe(_ remedies: [Remedy]) -> String? {
        remedies.isEmpty ? nil : remedies.map(\.description).joined(separator: "; ")
    }
}

extension Remedy: Encodable {
    enum CodingKeys: String, CodingKey {
        case kind, address, driver, remedy, processes, paths, device, names, interface, bytes, count, pool, path, uid
        case recursive, virtioIOMMU = "virtio_iommu", parameter, options, since, module, requests, running, words, text
    }

    /// `{"kind": KIND, ...}` with the remedy's facts under stable keys:
    /// `address` (a BDF or null), `driver`, `remedy` (for `forced`),
    /// `processes` (each pid, command), `paths`, `device`, `names`,
    /// `interface`, `bytes`, `count`, `pool`, `path`, `uid`, `recursive`,
    /// `virtio_iommu`, `parameter`, `options`, `since`, `module`, `requests`,
    /// `running`, `words`, `text`.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        switch self {
        case .bindToVFIO(let a), .bindGroup(let a), .diagnose(let a), .findHolder(let a):
            try c.encode(a, forKey: .address)
        case .bindBridgeToStub(let a, let d):
            try c.encode(a, forKey: .address)
            try c.encode(d, forKey: .driver)
        case .forced(let r): try c.encode(r, forKey: .remedy)
        case .unbindDriver(let a), .restoreDriver(let a), .showDevice(let a), .hotReset(let a):
            try c.encode(a, forKey: .address)
        case .stopProcesses(let ps): try c.encode(ps, forKey: .processes)
        case .unmount(let points): try c.encode(points, forKey: .paths)
        case .swapOff(let dev): try c.encode(dev, forKey: .device)
        case .stopStackedDevices(let names): try c.encode(names, forKey: .names)
        case .linkDown(let name): try c.encode(name, forKey: .interface)
        case .raiseMemlock(let n): try c.encode(n, forKey: .bytes)
        case .reserveHugePages(let n, let pool):
            try c.encode(n, forKey: .count)
            try c.encode(pool, forKey: .pool)
        case .addHugePages(let n): try c.encode(n, forKey: .count)
        case .grantAccess(let path, let uid):
            try c.encode(path, forKey: .path)
            try c.encode(uid, forKey: .uid)
        case .takeOwnership(let path, let uid):
            try c.encode(path, forKey: .path)
            try c.encode(uid, forKey: .uid)
        case .restrictMode(let path), .removeGroupWrite(let path), .inspect(let path): try c.encode(path, forKey: .path)
        case .removePath(let path, let recursive):
            try c.encode(path, forKey: .path)
            try c.encode(recursive, forKey: .recursive)
        case .enableInterruptRemapping(let v): try c.encode(v, forKey: .virtioIOMMU)
        case .allowUnsafeInterrupts(let p): try c.encode(p, forKey: .parameter)
        case .kernelConfig(let options, let since):
            try c.encode(options, forKey: .options)
            try c.encode(since, forKey: .since)
        case .loadModule(let m): try c.encode(m, forKey: .module)
        case .newerKernel(let requests, let running):
            try c.encode(requests, forKey: .requests)
            try c.encode(running, forKey: .running)
        case .readKernelLog(let words): try c.encode(words, forKey: .words)
        case .advice(let text): try c.encode(text, forKey: .text)
        case .moveConsole, .showMemlock, .runPrivileged, .enableIOMMU, .listDevices, .rescanPCI, .listGroups: break
        }
    }
}

/// How a front end words remedies: a function from remedies (in order) to
/// text, nil for none. ``plain`` is the library's own words. A front end
/// that prints its own commands passes its wording to JSON
/// encoding through ``key``: VFIOKit's reports that carry remedies (doctor
/// findings, group viability, device uses, binding notes) word their text
/// fields with the wording the encoder carries.
public struct RemedyWording: Sendable {
    /// The wording: remedies (in order) to text, nil for none.
    public let words: @Sendable ([Remedy]) -> String?

    /// A wording from a function.
    public init(_ words: @escaping @Sendable ([Remedy]) -> String?) { self.words = words }

    /// The library's plain words (``Remedy/describe(_:)``).
    public static let plain = RemedyWording { Remedy.describe($0) }

    /// The `userInfo` key of an encoder's wording.
    public static let key = CodingUserInfoKey(rawValue: "VFIOKit.RemedyWording")!
}

/// The remedy wording an encoder carries.
extension Encoder {
    /// The remedy wording this encoder carries (``RemedyWording/key``), plain words by default.
    public var remedyWording: RemedyWording { userInfo[RemedyWording.key] as? RemedyWording ?? .plain }
}
