#if canImport(Glibc)
import Glibc
#endif
import VFIOKit

/// What VFIO itself reports about a device bound to vfio-pci, for `vfioctl show`.
///
/// JSON keys: `device_flags` (names), `supports_reset`, `reset_methods`, `regions` (each `index`,
/// `name`, `size`, `offset`, `flags` (names), `mmap`), `irqs` (each `index`,
/// `name`, `count`, `flags` (names)), `capabilities` (names).
struct VFIODetails: Encodable {
    struct Region: Encodable {
        var index: UInt32
        var name: String
        var size: UInt64
        var offset: UInt64
        var flags: [String]
        var mmap: Bool
    }
    struct IRQ: Encodable {
        var index: UInt32
        var name: String
        var count: UInt32
        var flags: [String]
    }
    var deviceFlags: [String]
    var supportsReset: Bool
    /// The kernel's reset methods for the device (`/sys/bus/pci/devices/BDF/reset_method`: flr, pm, bus, ...).
    var resetMethods: [String]
    var regions: [Region]
    var irqs: [IRQ]
    var capabilities: [String]
    /// VFIO_DMA_CC_IOMMU for the domain the kernel gives this device (attached to an empty IOAS).
    var cacheCoherency: CacheCoherency

    enum CodingKeys: String, CodingKey {
        case regions, irqs, capabilities
        case deviceFlags = "device_flags", supportsReset = "supports_reset", resetMethods = "reset_methods"
        case cacheCoherency = "cache_coherency"
    }

    /// Opens the device's cdev, binds it to a fresh iommufd and asks VFIO
    /// (VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_REGION_INFO, VFIO_DEVICE_GET_IRQ_INFO);
    /// capabilities come from config space through the config region. Then it
    /// attaches the device to an empty IOAS (nothing mapped: the device can reach
    /// no memory) to learn whether its domain enforces cache coherency, and
    /// detaches. Everything is closed before returning.
    static func read(device: PCIDevice, host: PCIHost) throws(VFIOError) -> VFIODetails {
        guard host.root == "/" else {
            throw .invalid(.step("read VFIO details"), "VFIO details need the real /dev (not a fixture root)", object: device.address.description)
        }
        guard let cdev = device.vfioCdevPath else {
            throw .invalid(.step("read VFIO details"), "\(device.address) has no VFIO cdev", object: device.address.description,
                           remedies: [.kernelConfig(["CONFIG_VFIO_DEVICE_CDEV"], since: KernelVersion(6, 6))])
        }
        let iommufd = try IOMMUFD()
        let dev = try VFIODevice.open(cdev: cdev)
        defer { try? dev.close() }
        do throws(VFIOError) { try dev.bind(to: iommufd) } catch { throw host.explainOwnership(error, device: device.address) }
        let info = try dev.info()
        let flags = flagNames([(info.isPCI, "pci"), (info.supportsReset, "reset")])
        var regions: [Region] = []
        for i in 0..<UInt32(info.regionCount) {
            // vfio-pci answers EINVAL for regions the device lacks (VGA on a non-VGA device).
            let r: VFIORegionInfo
            do { r = try dev.regionInfo(i) } catch where error.errno == .invalidArgument { continue }
            let rf = flagNames([(r.isReadable, "read"), (r.isWritable, "write"), (r.isMappable, "mmap"),
                                (r.sparseAreas != nil, "sparse-mmap"), (r.msixMappable, "msix-mappable")])
            let name: String = switch i {
            case 0...5: "BAR\(i)"
            case PCIRegion.rom: "ROM"
            case PCIRegion.config: "config"
            case PCIRegion.vga: "VGA"
            default: r.type.map { "type \($0.type)/\($0.subtype)" } ?? "region \(i)"
            }
            regions.append(Region(index: i, name: name, size: r.size, offset: r.offset, flags: rf, mmap: r.isMappable))
        }
        var irqs: [IRQ] = []
        for idx in IRQIndex.allCases where idx.rawValue < UInt32(info.irqCount) {
            let q: IRQInfo
            do { q = try dev.irqInfo(idx) } catch where error.errno == .invalidArgument { continue }
            let f = flagNames([(q.supportsEventFD, "eventfd"), (q.isMaskable, "maskable"), (q.isAutomasked, "automasked"),
                               (q.isNoResize, "noresize")])
            irqs.append(IRQ(index: idx.rawValue, name: idx.description, count: q.count, flags: f))
        }
        var caps: [String] = []
        if let cfg = try? dev.configSpace() {
            for c in (try? cfg.capabilities()) ?? [] {
                caps.append(c.known.map { "\($0)" } ?? "cap 0x" + String(c.id, radix: 16))
            }
            for c in (try? cfg.extendedCapabilities()) ?? [] {
                caps.append(c.known.map { "\($0)" } ?? "ecap 0x" + String(c.id, radix: 16))
            }
        }
        let resetMethods = host.readTrimmed(host.sysfsPath(device.address) + "/reset_method")
        let cc: CacheCoherency
        do throws(VFIOError) {
            let ioas = try IOAS(iommufd)
            try dev.attach(to: ioas)
            defer { try? dev.detach() }
            cc = try ioas.cacheCoherency()
        } catch {
            cc = .unknown(CLIWording.message(error))
        }
        return VFIODetails(deviceFlags: flags, supportsReset: info.supportsReset,
                           resetMethods: resetMethods.map { $0.split(separator: " ").map(String.init) } ?? [],
                           regions: regions, irqs: irqs, capabilities: caps, cacheCoherency: cc)
    }

    func textLines() -> [String] {
        var out: [String] = []
        out.append("VFIO: " + (deviceFlags.isEmpty ? "no flags" : deviceFlags.joined(separator: ", "))
                   + "; reset " + (supportsReset ? "supported" + (resetMethods.isEmpty ? "" : " (\(resetMethods.joined(separator: ", ")))") : "not supported"))
        // Regions of size 0 (unused BARs, no ROM) are left out of the text; --json has them all.
        out.append(table(["  REGION", "NAME", "SIZE", "OFFSET", "FLAGS"], regions.filter { $0.size > 0 }.map {
            ["  \($0.index)", $0.name, $0.size == 0 ? "-" : formatBytes($0.size), "0x" + String($0.offset, radix: 16),
             $0.flags.joined(separator: ",")]
        }))
        out.append(table(["  IRQ", "NAME", "COUNT", "FLAGS"], irqs.map {
            ["  \($0.index)", $0.name, "\($0.count)", $0.flags.joined(separator: ",")]
        }))
        if !capabilities.isEmpty { out.append("  capabilities: " + capabilities.joined(separator: ", ")) }
        out.append("  cache coherency: " + cacheCoherency.text)
        return out
    }
}

/// The names of the flags that are set, in order.
private func flagNames(_ flags: [(isSet: Bool, name: String)]) -> [String] {
    flags.filter(\.isSet).map(\.name)
}
