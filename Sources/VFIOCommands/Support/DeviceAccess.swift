import ArgumentParser
import VFIOKit
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

/// `--container`, for the device commands: use the group path instead of the cdev.
struct PathOptions: ParsableArguments {
    @Flag(name: .long, help: "Open the device through its group and a VFIO container (/dev/vfio/vfio) instead of its cdev and /dev/iommu.")
    var container = false
}

/// A device opened for one command: its cdev bound to a new iommufd context
/// (not attached: config space, BARs, IRQ info and reset need no DMA
/// translation), or through its group in a new type1 container.
/// ``close()`` releases in the kernel's order: device, group, container or iommufd.
final class OpenedDevice {
    let address: PCIAddress
    let device: VFIODevice
    let iommufd: IOMMUFD?
    let deviceID: UInt32?
    let group: VFIOGroup?
    let container: VFIOContainer?

    private init(address: PCIAddress, device: VFIODevice, iommufd: IOMMUFD?, deviceID: UInt32?,
                 group: VFIOGroup?, container: VFIOContainer?) {
        self.address = address
        self.device = device
        self.iommufd = iommufd
        self.deviceID = deviceID
        self.group = group
        self.container = container
    }

    /// Opens `text` (a BDF) the way `container` says. Nothing stays open on failure.
    static func open(_ text: String, host: PCIHost, container useContainer: Bool) throws(VFIOError) -> OpenedDevice {
        let a = try PCIAddress(parsing: text)
        if useContainer {
            let number = try DeviceNodes.groupNumber(of: a, host: host)
            let container = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try VFIOContainer() }
            let group: VFIOGroup
            do throws(VFIOError) {
                group = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try VFIOGroup(number: number, host: host) }
            } catch {
                try? container.close()
                throw error
            }
            do throws(VFIOError) {
                try group.setContainer(container)
                try container.setIOMMU(try container.supports(.type1v2) ? .type1v2 : .type1)
                let device = try group.device(a.description)
                return OpenedDevice(address: a, device: device, iommufd: nil, deviceID: nil, group: group, container: container)
            } catch {
                try? group.close()
                try? container.close()
                throw host.explainOwnership(error, device: a, group: number)
            }
        }
        let cdev = try DeviceNodes.cdevPath(of: a, host: host)
        let ctx = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try IOMMUFD() }
        do throws(VFIOError) {
            let device = try DeviceNodes.explainingOpen(host) { () throws(VFIOError) in try VFIODevice.open(cdev: cdev) }
            do throws(VFIOError) {
                let devid = try device.bind(to: ctx)
                return OpenedDevice(address: a, device: device, iommufd: ctx, deviceID: devid, group: nil, container: nil)
            } catch {
                try? device.close()
                throw host.explainOwnership(error, device: a)
            }
        } catch {
            try? ctx.close()
            throw error
        }
    }

    /// Closes the device, then its group and container or its iommufd.
    func close() throws(VFIOError) {
        var first: VFIOError?
        func step(_ body: () throws(VFIOError) -> Void) {
            do { try body() } catch { if first == nil { first = error } }
        }
        step { () throws(VFIOError) in try device.close() }
        if let group { step { () throws(VFIOError) in try group.close() } }
        if let container { step { () throws(VFIOError) in try container.close() } }
        if let iommufd { step { () throws(VFIOError) in try iommufd.close() } }
        if let first { throw first }
    }

    deinit { try? close() }
}

/// Finding and opening the /dev nodes of a device, with errors that name the
/// node and the permission missing.
enum DeviceNodes {
    /// `/dev/vfio/devices/vfioN` of a device bound to vfio-pci. The error says
    /// when the device does not exist or which driver it is bound to instead.
    static func cdevPath(of a: PCIAddress, host: PCIHost) throws(VFIOError) -> String {
        try requireOnVFIO(a, host: host)
        return try VFIODevice.cdevPath(bdf: a.description, host: host)
    }

    /// The IOMMU group of a device bound to vfio-pci.
    static func groupNumber(of a: PCIAddress, host: PCIHost) throws(VFIOError) -> Int {
        try requireOnVFIO(a, host: host)
        return try VFIOGroup.groupNumber(of: a, host: host)
    }

    static func requireOnVFIO(_ a: PCIAddress, host: PCIHost) throws(VFIOError) {
        let dir = "/sys/bus/pci/devices/\(a)"
        guard host.exists(dir) else {
            throw VFIOError.invalid(.step(.findPCIDevice), "there is no PCI device \(a)", object: a.description,
                                    remedies: [.listDevices])
        }
        let driver = host.linkName(dir + "/driver")
        guard driver == "vfio-pci" else {
            throw VFIOError.invalid(.step("find VFIO device"), "\(a) is not bound to vfio-pci (its driver is \(driver ?? "none"))",
                                    object: a.description, remedies: [.bindToVFIO(a)])
        }
    }

    /// Runs `body` (which opens nodes); an EACCES/EPERM on open gets the
    /// node's owner and mode and this process's ids in its detail.
    static func explainingOpen<T>(_ host: PCIHost, _ body: () throws(VFIOError) -> T) throws(VFIOError) -> T {
        do {
            return try body()
        } catch {
            throw explain(error, host: host)
        }
    }

    static func explain(_ error: VFIOError, host: PCIHost) -> VFIOError {
        guard error.operation == .syscall(.open), let node = error.object,
              let code = error.errno, code == .permissionDenied || code == .notPermitted else { return error }
        var e = error
        let kernel = Sys.current
        var facts = "this process runs as uid \(Sys.getuid(kernel)) gid \(Sys.getgid(kernel))"
        if let st = host.fileStatus(node) {
            facts = "\(node) is \(modeString(st.mode)) owned by uid \(st.uid) gid \(st.gid); " + facts
                + "; open needs read and write permission on it"
        }
        e.detail = [e.detail, facts].compactMap { $0 }.joined(separator: ". ")
        e.remedies = [.grantAccess(path: node, uid: nil),
                      .advice(node.hasPrefix("/dev/iommu") ? "/dev/iommu is safe to open for any user who may use a VFIO device"
                                                           : "the VFIO node grants control of the device")]
        return e
    }

    /// `crw-rw----` for a device node's mode.
    static func modeString(_ mode: UInt32) -> String {
        let kind: Character
        switch mode & 0o170000 {
        case 0o020000: kind = "c"
        case 0o060000: kind = "b"
        case 0o040000: kind = "d"
        case 0o120000: kind = "l"
        default: kind = "-"
        }
        var s = String(kind)
        let chars: [Character] = ["r", "w", "x"]
        for shift in stride(from: 6, through: 0, by: -3) {
            for (i, c) in chars.enumerated() {
                s.append(mode & (UInt32(4 >> i) << UInt32(shift)) != 0 ? c : "-")
            }
        }
        return s
    }
}
