// vfiokit-edu-dma: adopts the iommufd and edu device fds that
// `vfioctl attach BDF --exec` hands over, and runs one edu DMA round trip
// through the given IOAS: memory -> device -> memory, bytes compared.
//
//   vfioctl attach $EDU --prebound --exec -- vfiokit-edu-dma
//   vfioctl attach $EDU --exec -- vfiokit-edu-dma        (unbound: binds and attaches itself)
//
// Values come from the environment vfioctl sets (VFIOKIT_IOMMUFD_FD,
// VFIOKIT_DEVICE_FD, VFIOKIT_IOAS_ID, VFIOKIT_DEVICE_ID when prebound,
// VFIOKIT_DEVICE_BDF) or from options: --iommufd FD --device FD --ioas ID
// [--devid ID] [--iova IOVA] [--bytes N] [--peer-iova IOVA]. --peer-iova: then reads
// 4 bytes by DMA at that IOVA, which maps another edu's BAR 0 (vfioctl attach
// --map-bar BDF/0,4K@IOVA), and expects that edu's id register (0x010000ed).
// Exit status: 0 round trip good, 1 failure (message on stderr), 2 usage.
import VFIOKit
import VFIOKitTestSupport
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

func fail(_ status: Int32, _ message: String) -> Never {
    let line = "vfiokit-edu-dma: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(status)
}

func number(_ text: String) -> UInt64? {
    text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
}

var options: [String: String] = [:]
let env: [(String, String)] = [("iommufd", "VFIOKIT_IOMMUFD_FD"), ("device", "VFIOKIT_DEVICE_FD"),
                               ("ioas", "VFIOKIT_IOAS_ID"), ("devid", "VFIOKIT_DEVICE_ID"), ("bdf", "VFIOKIT_DEVICE_BDF")]
for (key, name) in env {
    if let v = getenv(name) { options[key] = String(cString: v) }
}
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard a.hasPrefix("--"), let v = args.popFirst() else {
        if a == "--help" || a == "-h" {
            print("usage: vfiokit-edu-dma [--iommufd FD] [--device FD] [--ioas ID] [--devid ID] [--iova IOVA] [--bytes N] [--peer-iova IOVA]")
            exit(0)
        }
        fail(2, "unexpected argument '\(a)' (options take a value: --iommufd FD --device FD --ioas ID ...)")
    }
    options[String(a.dropFirst(2))] = v
}

@MainActor func required(_ key: String) -> UInt64 {
    guard let t = options[key] else { fail(2, "no --\(key) and no \(env.first { $0.0 == key }?.1 ?? key) in the environment") }
    guard let v = number(t) else { fail(2, "--\(key) '\(t)' is not a number") }
    return v
}

let iommufdFD = Int32(truncatingIfNeeded: required("iommufd"))
let deviceFD = Int32(truncatingIfNeeded: required("device"))
let ioasID = UInt32(truncatingIfNeeded: required("ioas"))
let devid = options["devid"].flatMap(number).map { UInt32(truncatingIfNeeded: $0) }
let iova = IOVA(options["iova"].flatMap(number) ?? 0x0800_0000)
let bytes = Int(options["bytes"].flatMap(number) ?? 4000)
let name = options["bdf"] ?? "device fd \(deviceFD)"
for (what, fd) in [("iommufd", iommufdFD), ("device", deviceFD)] where (try? Sys.fcntl(nil, fd, F_GETFD)) == nil {
    fail(2, "the \(what) fd \(fd) is not open in this process (was it passed with --exec?)")
}
guard bytes > 0, bytes <= EduDevice.maxTransfer else { fail(2, "--bytes must be 1...\(EduDevice.maxTransfer)") }

do {
    let ctx = IOMMUFD(adopting: iommufdFD, label: "inherited iommufd (fd \(iommufdFD))")
    let ioas = try IOAS(existing: ioasID, in: ctx)
    let device: VFIODevice
    if let devid {
        device = VFIODevice(adoptingCdev: deviceFD, path: name, boundTo: ctx, deviceID: devid)
    } else {
        device = VFIODevice(adoptingCdev: deviceFD, path: name)
        try device.bind(to: ctx)
        try device.attach(to: ioas)
    }
    let edu = try EduDevice(device)
    try edu.enableBusMaster()
    let buffer = try DMABuffer(length: 8192)
    let mapping = try ioas.map(buffer, at: iova)
    let pattern = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
    buffer.write(pattern, at: 0)
    try edu.dmaToDevice(from: mapping.iova, count: bytes)
    try edu.dmaFromDevice(to: mapping.iova + 4096, count: bytes)
    let back = buffer.read(at: 4096, count: bytes)
    var peerID: UInt32?
    if let peer = options["peer-iova"] {
        guard let p = number(peer) else { fail(2, "--peer-iova '\(peer)' is not a number") }
        // Poison the device buffer first, so a read the IOMMU stops shows.
        buffer.store32(0x5a5a_5a5a, at: 0)
        try edu.dmaToDevice(from: mapping.iova, count: 4)
        try edu.dmaToDevice(from: IOVA(p), count: 4)
        try edu.dmaFromDevice(to: mapping.iova + 4096, count: 4)
        peerID = buffer.load32(at: 4096)
    }
    try mapping.unmap()
    guard back == pattern else {
        let firstBad = zip(back, pattern).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? 0
        fail(1, "DMA round trip mismatch at byte \(firstBad) (IOAS \(ioasID), IOVA \(iova))")
    }
    print("edu DMA round trip OK: \(bytes) bytes through IOAS \(ioasID) at IOVA \(iova) "
          + "(device \(devid.map { "id \($0), prebound" } ?? "bound here"))")
    if let peerID, let peer = options["peer-iova"] {
        guard peerID == EduDevice.identification else {
            fail(1, "peer DMA at IOVA \(peer) read 0x\(String(peerID, radix: 16)), not an edu's id (0x10000ed)")
        }
        print("peer DMA OK: read the id 0x\(String(peerID, radix: 16)) of the edu whose BAR 0 is mapped at IOVA \(peer)")
    }
} catch {
    fail(1, error.description)
}
