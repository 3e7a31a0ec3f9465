// libFuzzer's entry point for VFIOKit's parsers of outside input. One binary, many
// targets: VFIOKIT_FUZZ_TARGET names the one a run fuzzes (Scripts/fuzz.sh sets it;
// Fuzz/README.md lists them). Built only with VFIOKIT_FUZZ=1 (see Package.swift).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One parser under fuzzing: takes any bytes, must never trap, hang or leak, and
/// traps itself (`fuzzCheck`) when a property of the parse does not hold.
struct FuzzTarget: Sendable {
    let name: String
    let summary: String
    let run: @Sendable ([UInt8]) -> Void
}

let fuzzTargets: [FuzzTarget] = [
    FuzzTarget(name: "region-info", summary: "VFIO_DEVICE_GET_REGION_INFO answers: header and capability chain", run: fuzzRegionInfo),
    FuzzTarget(name: "device-info", summary: "VFIO_DEVICE_GET_INFO and GET_REGION_INFO through the growing ioctl, then region reads", run: fuzzDeviceInfo),
    FuzzTarget(name: "type1-info", summary: "VFIO_IOMMU_GET_INFO answers: IOVA ranges, DMA avail, migration caps", run: fuzzType1Info),
    FuzzTarget(name: "hot-reset-info", summary: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO answers", run: fuzzHotResetInfo),
    FuzzTarget(name: "vevent", summary: "vEVENTQ reads: headers, lost-event markers, sequence numbers", run: fuzzVEvents),
    FuzzTarget(name: "config-caps", summary: "PCI config space capability lists (standard and extended) read through a device", run: fuzzConfigCaps),
    FuzzTarget(name: "hw-info", summary: "IOMMU_GET_HW_INFO decoding and its vfioctl report", run: fuzzHardwareInfo),
    FuzzTarget(name: "sysfs", summary: "sysfs/procfs contents: PCI device files, groups, IOMMUs, mountinfo, swaps, interrupts", run: fuzzSysfs),
    FuzzTarget(name: "binding-record", summary: "the binding state file (JSON record)", run: fuzzBindingRecord),
    FuzzTarget(name: "cli-values", summary: "vfioctl's sizes, IOVAs, numbers, --map, --ioas, --hwpt and PCI addresses", run: fuzzCLIValues),
]

/// The target this process fuzzes, from VFIOKIT_FUZZ_TARGET.
let selectedTarget: FuzzTarget = {
    let name = getenv("VFIOKIT_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    if let t = fuzzTargets.first(where: { $0.name == name }) { return t }
    var msg = "vfiokit-fuzz: set VFIOKIT_FUZZ_TARGET to one of:\n"
    for t in fuzzTargets { msg += "  \(t.name)\t\(t.summary)\n" }
    // Safety: writes the message's UTF-8 bytes, valid for the call, to fd 2.
    _ = Array(msg.utf8).withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}()

/// A property of a parse that must hold: a failure is a finding, kept by libFuzzer as a crash.
func fuzzCheck(_ ok: @autoclosure () -> Bool, _ what: @autoclosure () -> String) {
    if !ok() { fatalError("vfiokit-fuzz \(selectedTarget.name): \(what())") }
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    _ = selectedTarget.name
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    // Safety: libFuzzer passes `size` readable bytes at `data` (nil only when size is 0); they are copied at once.
    let bytes = size == 0 || data == nil ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    selectedTarget.run(bytes)
    return 0
}

/// Reads fuzz bytes front to back; past the end everything reads as zero.
struct FuzzReader {
    var bytes: [UInt8]
    var at = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var remaining: [UInt8] { at < bytes.count ? Array(bytes[at...]) : [] }
    mutating func u8() -> UInt8 { defer { at += 1 }; return at < bytes.count ? bytes[at] : 0 }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
}
