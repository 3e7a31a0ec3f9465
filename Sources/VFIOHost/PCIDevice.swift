import VFIOSystem

/// One PCI function as sysfs describes it (`/sys/bus/pci/devices/BDF`).
///
/// A snapshot: read it again after binding. JSON keys (stable): `address`,
/// `vendor_id`, `device_id`, `subsystem_vendor_id`, `subsystem_device_id`
/// (`"0x1234"` strings), `class_code` (`"0x010802"`), `class_name`, `driver`
/// (null when none), `driver_override` (null when unset), `iommu_group` (null
/// when the device has none), `numa_node` (null when unknown), `vfio_cdev`
/// (`"vfio0"` or null), `is_bridge`, `header_type`.
public struct PCIDevice: Sendable, Equatable, Codable {
    /// The function's address (domain:bus:device.function).
    public var address: PCIAddress
    /// The PCI vendor id (`vendor` in sysfs).
    public var vendorID: UInt16
    /// The PCI device id (`device` in sysfs).
    public var deviceID: UInt16
    /// The subsystem vendor id, when sysfs has one.
    public var subsystemVendorID: UInt16?
    /// The subsystem device id, when sysfs has one.
    public var subsystemDeviceID: UInt16?
    /// 24-bit class code: class, subclass, programming interface (`0x010802` = NVMe).
    public var classCode: UInt32
    /// The bound driver's name, or nil when no driver is bound.
    public var driver: String?
    /// `driver_override`, or nil when it is unset (`(null)`).
    public var driverOverride: String?
    /// The IOMMU group number, or nil when the device is in no group (no IOMMU, or not translated).
    public var iommuGroup: Int?
    /// The NUMA node, or nil when the platform does not say (-1).
    public var numaNode: Int?
    /// The VFIO cdev's name (`vfio0` for `/dev/vfio/devices/vfio0`), or nil when there is none.
    public var vfioCdev: String?
    /// PCI header type 1 (PCI-to-PCI bridge) or class 0x0604/0x0609.
    public var isBridge: Bool
    /// Config-space header type (low 7 bits), when config space could be read.
    public var headerType: UInt8?

    /// A device with these facts (`PCIHost.device(_:)` reads them from sysfs).
    public init(address: PCIAddress, vendorID: UInt16, deviceID: UInt16, subsystemVendorID: UInt16? = nil,
                subsystemDeviceID: UInt16? = nil, classCode: UInt32, driver: String? = nil,
                driverOverride: String? = nil, iommuGroup: Int? = nil, numaNode: Int? = nil,
                vfioCdev: String? = nil, isBridge: Bool = false, headerType: UInt8? = nil) {
        self.address = address
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.subsystemVendorID = subsystemVendorID
        self.subsystemDeviceID = subsystemDeviceID
        self.classCode = classCode
        self.driver = driver
        self.driverOverride = driverOverride
        self.iommuGroup = iommuGroup
        self.numaNode = numaNode
        self.vfioCdev = vfioCdev
        self.isBridge = isBridge
        self.headerType = headerType
    }

    /// A readable name for the class code (`NVMe controller`, `PCI bridge`).
    public var className: String { PCIClassNames.name(for: classCode) }

    /// `1234:11e8`.
    public var ids: String { hex(UInt32(vendorID), 4) + ":" + hex(UInt32(deviceID), 4) }

    /// Whether the device is bound to a driver that hands it to VFIO: vfio-pci
    /// or a variant (``VFIODrivers/isVFIOPCI(_:)``), or any driver that made it
    /// a VFIO cdev.
    public var isBoundToVFIO: Bool { VFIODrivers.isVFIOPCI(driver) || (driver != nil && vfioCdev != nil) }

    /// The device's cdev path (`/dev/vfio/devices/vfio0`), when it has one.
    public var vfioCdevPath: String? { vfioCdev.map { "/dev/vfio/devices/" + $0 } }

    /// The legacy group node (`/dev/vfio/5`), when the device has a group.
    public var vfioGroupPath: String? { iommuGroup.map { "/dev/vfio/\($0)" } }

    enum CodingKeys: String, CodingKey {
        case address, driver
        case vendorID = "vendor_id", deviceID = "device_id"
        case subsystemVendorID = "subsystem_vendor_id", subsystemDeviceID = "subsystem_device_id"
        case classCode = "class_code", className = "class_name"
        case driverOverride = "driver_override", iommuGroup = "iommu_group", numaNode = "numa_node"
        case vfioCdev = "vfio_cdev", isBridge = "is_bridge", headerType = "header_type"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(address, forKey: .address)
        try c.encode("0x" + hex(UInt32(vendorID), 4), forKey: .vendorID)
        try c.encode("0x" + hex(UInt32(deviceID), 4), forKey: .deviceID)
        try c.encode(subsystemVendorID.map { "0x" + hex(UInt32($0), 4) }, forKey: .subsystemVendorID)
        try c.encode(subsystemDeviceID.map { "0x" + hex(UInt32($0), 4) }, forKey: .subsystemDeviceID)
        try c.encode("0x" + hex(classCode, 6), forKey: .classCode)
        try c.encode(className, forKey: .className)
        try c.encode(driver, forKey: .driver)
        try c.encode(driverOverride, forKey: .driverOverride)
        try c.encode(iommuGroup, forKey: .iommuGroup)
        try c.encode(numaNode, forKey: .numaNode)
        try c.encode(vfioCdev, forKey: .vfioCdev)
        try c.encode(isBridge, forKey: .isBridge)
        try c.encode(headerType, forKey: .headerType)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func hexField(_ k: CodingKeys) throws -> UInt32? {
            guard let s = try c.decodeIfPresent(String.self, forKey: k) else { return nil }
            return UInt32(s.hasPrefix("0x") ? String(s.dropFirst(2)) : s, radix: 16)
        }
        address = try c.decode(PCIAddress.self, forKey: .address)
        vendorID = UInt16(try hexField(.vendorID) ?? 0)
        deviceID = UInt16(try hexField(.deviceID) ?? 0)
        subsystemVendorID = try hexField(.subsystemVendorID).map { UInt16($0) }
        subsystemDeviceID = try hexField(.subsystemDeviceID).map { UInt16($0) }
        classCode = try hexField(.classCode) ?? 0
        driver = try c.decodeIfPresent(String.self, forKey: .driver)
        driverOverride = try c.decodeIfPresent(String.self, forKey: .driverOverride)
        iommuGroup = try c.decodeIfPresent(Int.self, forKey: .iommuGroup)
        numaNode = try c.decodeIfPresent(Int.self, forKey: .numaNode)
        vfioCdev = try c.decodeIfPresent(String.self, forKey: .vfioCdev)
        isBridge = try c.decodeIfPresent(Bool.self, forKey: .isBridge) ?? false
        headerType = try c.decodeIfPresent(UInt8.self, forKey: .headerType)
    }
}

/// Names for the PCI class codes people meet most (PCI Code and ID Assignment spec).
public enum PCIClassNames {
    /// The most specific name known: class+subclass+prog-if, then class+subclass, then class.
    public static func name(for code: UInt32) -> String {
        if let n = withInterface[code] { return n }
        if let n = subclasses[code >> 8] { return n }
        if let n = classes[code >> 16] { return n }
        return "class 0x" + hex(code, 6)
    }

    static let withInterface: [UInt32: String] = [
        0x010601: "SATA controller (AHCI)", 0x010802: "NVMe controller",
        0x0c0330: "USB controller (xHCI)", 0x0c0320: "USB controller (EHCI)",
        0x0c0310: "USB controller (OHCI)", 0x0c0300: "USB controller (UHCI)",
    ]
    static let subclasses: [UInt32: String] = [
        0x0000: "Non-VGA unclassified device", 0x0001: "VGA-compatible unclassified device",
        0x0100: "SCSI storage controller", 0x0101: "IDE controller", 0x0104: "RAID controller",
        0x0106: "SATA controller", 0x0107: "SAS controller", 0x0108: "Non-volatile memory controller",
        0x0180: "Mass storage controller",
        0x0200: "Ethernet controller", 0x0207: "InfiniBand controller", 0x0280: "Network controller",
        0x0300: "VGA compatible controller", 0x0302: "3D controller", 0x0380: "Display controller",
        0x0401: "Audio device", 0x0403: "Audio device", 0x0500: "RAM memory",
        0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0609: "PCI bridge (semi-transparent)",
        0x0680: "Bridge", 0x0700: "Serial controller", 0x0780: "Communication controller",
        0x0800: "PIC", 0x0805: "SD host controller", 0x0806: "IOMMU", 0x0880: "System peripheral",
        0x0c03: "USB controller", 0x0c05: "SMBus", 0x0c80: "Serial bus controller",
        0x0d00: "IRDA controller", 0x0d80: "Wireless controller",
        0x1000: "Network and computing encryption device", 0x1080: "Encryption controller",
        0x1101: "Performance counters", 0x1180: "Signal processing controller",
        0x1200: "Processing accelerator", 0x1300: "Non-essential instrumentation",
        0xff00: "Unassigned class",
    ]
    static let classes: [UInt32: String] = [
        0x00: "Unclassified device", 0x01: "Mass storage controller", 0x02: "Network controller",
        0x03: "Display controller", 0x04: "Multimedia controller", 0x05: "Memory controller",
        0x06: "Bridge", 0x07: "Communication controller", 0x08: "Generic system peripheral",
        0x09: "Input device controller", 0x0a: "Docking station", 0x0b: "Processor",
        0x0c: "Serial bus controller", 0x0d: "Wireless controller", 0x0e: "Intelligent controller",
        0x0f: "Satellite communications controller", 0x10: "Encryption controller",
        0x11: "Signal processing controller", 0x12: "Processing accelerator",
        0x13: "Non-essential instrumentation", 0x40: "Coprocessor", 0xff: "Unassigned class",
    ]
}

extension PCIHost {
    static let devicesDir = "/sys/bus/pci/devices"

    /// The sysfs directory of a device (`/sys/bus/pci/devices/0000:00:03.0`).
    public func sysfsPath(_ a: PCIAddress) -> String { Self.devicesDir + "/" + a.description }

    /// Every PCI function sysfs lists, in address order.
    public func devices() -> [PCIDevice] {
        list(Self.devicesDir).compactMap { name in
            guard let a = try? PCIAddress(parsing: name) else { return nil }
            return try? device(a)
        }.sorted { $0.address < $1.address }
    }

    /// One device; throws when sysfs has no such device, or when its
    /// directory or the files that say what it is (vendor, device, driver,
    /// driver_override, IOMMU group) exist but cannot be read: such an error
    /// names the syscall and errno, never "no such device".
    public func device(_ a: PCIAddress) throws(VFIOError) -> PCIDevice {
        let dir = sysfsPath(a)
        guard try linkStatusIfPresent(dir) != nil else {
            throw VFIOError.invalid(.step(.findPCIDevice), "no PCI device \(a) on this machine (\(dir) does not exist)",
                                    object: a.description, remedies: [.listDevices, .rescanPCI])
        }
        func parseHex(_ text: String) -> UInt32? {
            var s = text.trimmingWhitespace()
            if s.hasPrefix("0x") { s.removeFirst(2) }
            return UInt32(s, radix: 16)
        }
        func hexFile(_ name: String) -> UInt32? { read(dir + "/" + name).flatMap(parseHex) }
        func requiredHex(_ name: String) throws(VFIOError) -> UInt32 {
            guard let text = try readIfPresent(dir + "/" + name) else {
                throw VFIOError.invalid(.step(.readPCIDevice), "\(dir) has no \(name) file", object: a.description,
                                        remedies: [.advice("is sysfs mounted at /sys?")])
            }
            guard let value = parseHex(text) else {
                throw VFIOError.invalid(.step(.readPCIDevice), "\(dir)/\(name) reads \"\(text.trimmingWhitespace())\", not a hex number",
                                        object: a.description)
            }
            return value
        }
        let vendor = try requiredHex("vendor")
        let devid = try requiredHex("device")
        let cls = hexFile("class") ?? 0
        // The facts bind, restore and viability decide on fail closed: a driver link, override or
        // group link that exists but cannot be read is an error, never "none" (a bind would
        // record "no original driver" and its restore leave the device without one).
        var override = try readIfPresent(dir + "/driver_override")?.trimmingWhitespace()
        if override == "(null)" || override == "" { override = nil }
        let group = try linkIfPresent(dir + "/iommu_group").flatMap { Int($0) }
        let driver = try driverLink(of: a)
        let numa = readTrimmed(dir + "/numa_node").flatMap { Int($0) }.flatMap { $0 < 0 ? nil : $0 }
        let cdev = list(dir + "/vfio-dev").first { $0.hasPrefix("vfio") }
        // Header type: config space byte 0x0e (the first 64 bytes are readable by anyone).
        var headerType: UInt8?
        if let cfg = try? readBytes(dir + "/config", limit: 64), cfg.count > 0x0e { headerType = cfg[0x0e] & 0x7f }
        let classBridge = (cls >> 8) == 0x0604 || (cls >> 8) == 0x0609
        return PCIDevice(
            address: a, vendorID: UInt16(truncatingIfNeeded: vendor), deviceID: UInt16(truncatingIfNeeded: devid),
            subsystemVendorID: hexFile("subsystem_vendor").map { UInt16(truncatingIfNeeded: $0) },
            subsystemDeviceID: hexFile("subsystem_device").map { UInt16(truncatingIfNeeded: $0) },
            classCode: cls, driver: driver, driverOverride: override,
            iommuGroup: group, numaNode: numa, vfioCdev: cdev,
            isBridge: classBridge || headerType == 1 || headerType == 2, headerType: headerType)
    }

    /// Whether a kernel driver by this name is registered on the PCI bus.
    public func driverRegistered(_ name: String) -> Bool { exists("/sys/bus/pci/drivers/" + name) }
}
