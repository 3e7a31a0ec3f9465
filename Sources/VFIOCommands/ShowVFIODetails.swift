import VFIOKit

/// What VFIO itself reports about a device bound to vfio-pci, for `vfioctl show`.
///
/// JSON keys: `device_flags` (names), `supports_reset`, `regions` (each `index`,
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
    var regions: [Region]
    var irqs: [IRQ]
    var capabilities: [String]

    enum CodingKeys: String, CodingKey {
        case regions, irqs, capabilities
        case deviceFlags = "device_flags", supportsReset = "supports_reset"
    }

    /// Opens the device's cdev and asks VFIO (VFIO_DEVICE_GET_INFO,
    /// VFIO_DEVICE_GET_REGION_INFO, VFIO_DEVICE_GET_IRQ_INFO).
    static func read(device: PCIDevice, host: PCIHost) throws(VFIOError) -> VFIODetails {
        throw .invalid("read VFIO details", "this build of vfioctl has no VFIO device layer yet",
                       object: device.address.description, hint: "the sysfs facts above are complete")
    }

    func textLines() -> [String] {
        var out: [String] = []
        out.append("VFIO: " + (deviceFlags.isEmpty ? "no flags" : deviceFlags.joined(separator: ", "))
                   + "; reset " + (supportsReset ? "supported" : "not supported"))
        out.append(table(["  REGION", "NAME", "SIZE", "OFFSET", "FLAGS"], regions.map {
            ["  \($0.index)", $0.name, $0.size == 0 ? "-" : formatBytes($0.size), "0x" + String($0.offset, radix: 16),
             $0.flags.joined(separator: ",")]
        }))
        out.append(table(["  IRQ", "NAME", "COUNT", "FLAGS"], irqs.map {
            ["  \($0.index)", $0.name, "\($0.count)", $0.flags.joined(separator: ",")]
        }))
        if !capabilities.isEmpty { out.append("  capabilities: " + capabilities.joined(separator: ", ")) }
        return out
    }
}
