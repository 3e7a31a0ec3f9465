import Foundation
import Testing
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// O_DIRECT (Glibc's module hides it behind _GNU_SOURCE); x86-64's value, the guest's architecture.
let oDirect: Int32 = 0o40000

/// The test guest's nvme (Scripts/vm.sh) as the driver's guest tests see it.
enum NVMeGuest {
    static var env: [String: String] { ProcessInfo.processInfo.environment }
    /// The pattern Scripts/nvme-test-image.sh writes: 512-byte blocks from this LBA on.
    static let patternLBA: UInt64 = 98304
    static let patternBlocks = 32768
    /// The pattern's last 4 MiB: tests may overwrite it (perf --write), none reads it.
    static let scratchLBA: UInt64 = 98304 + 24576

    static func bdf() throws -> String { try #require(Guest.nvme, "VFIOKIT_NVME not set by the guest") }
    static func block() throws -> String {
        try #require(env["VFIOKIT_NVME_BLOCK"].flatMap { $0.isEmpty ? nil : $0 }, "VFIOKIT_NVME_BLOCK not set by the guest")
    }

    /// `count` bytes of the disk's initial contents at `offset`, from the
    /// untouched copy vm.sh gives the guest (`--nvme-image`). Fails the test
    /// when the run was started without the test image.
    static func image(offset: UInt64, count: Int) throws -> [UInt8] {
        let path = try #require(env["VFIOKIT_NVME_IMAGE"].flatMap { $0.isEmpty ? nil : $0 },
                                "VFIOKIT_NVME_IMAGE not set: run the guest with --nvme-image (Scripts/nvme-test-image.sh)")
        let h = try #require(FileHandle(forReadingAtPath: path), "cannot open \(path)")
        defer { try? h.close() }
        try h.seek(toOffset: offset)
        let d = try #require(try h.read(upToCount: count))
        try #require(d.count == count, "\(path) is shorter than \(offset + UInt64(count)) bytes")
        return Array(d)
    }

    /// The pristine pattern blocks `lba..<lba+blocks`, checked to be the pattern.
    static func pattern(lba: UInt64, blocks: Int) throws -> [UInt8] {
        let bytes = try image(offset: lba * 512, count: blocks * 512)
        let head = String(decoding: bytes.prefix(36), as: UTF8.self)
        try #require(head == "VFIOKIT-NVME-PATTERN LBA \(String(format: "%010d", lba))\n",
                     "the nvme image does not hold the test pattern at LBA \(lba): \(head.debugDescription)")
        return bytes
    }

    /// Reads through the kernel's nvme driver: O_DIRECT pread on the block device.
    static func kernelRead(lba: UInt64, blocks: Int) throws -> [UInt8] {
        let path = try block()
        let fd = open(path, O_RDONLY | oDirect | O_CLOEXEC)
        try #require(fd >= 0, "open \(path): errno \(errno)")
        defer { close(fd) }
        let n = blocks * 512
        var p: UnsafeMutableRawPointer?
        try #require(posix_memalign(&p, 4096, n) == 0)
        defer { free(p) }
        let got = pread(fd, p, n, off_t(lba * 512))
        try #require(got == n, "pread \(path) at LBA \(lba): \(got), errno \(errno)")
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    /// Waits until the kernel's nvme driver has the controller and its block device is there.
    static func waitForKernelDriver(_ bdf: String, seconds: Double = 20) throws {
        let path = try block()
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if Guest.driver(of: bdf) == "nvme" && access(path, F_OK) == 0 {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                if fd >= 0 {
                    close(fd)
                    return
                }
            }
            usleep(100_000)
        }
        Issue.record("\(bdf) did not come back to the kernel's nvme driver with \(path) within \(seconds) s (driver: \(Guest.driver(of: bdf) ?? "none"))")
        throw CancellationError()
    }

    /// MSI-X interrupt counts per vector of `bdf`, from /proc/interrupts
    /// (vfio-pci names them `vfio-msix[N](BDF)`).
    static func msixCounts(_ bdf: String) -> [Int: UInt64] {
        guard let text = try? String(contentsOfFile: "/proc/interrupts", encoding: .utf8) else { return [:] }
        var cpus = 0
        var out: [Int: UInt64] = [:]
        for (i, line) in text.split(separator: "\n").enumerated() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if i == 0 {
                cpus = fields.count
                continue
            }
            guard let name = fields.last, name.hasPrefix("vfio-msix["), name.hasSuffix("(\(bdf))"),
                  let close = name.firstIndex(of: "]"), let vector = Int(name[name.index(name.startIndex, offsetBy: 10)..<close])
            else { continue }
            out[vector] = fields.dropFirst().prefix(cpus).compactMap { UInt64($0) }.reduce(0, +)
        }
        return out
    }

    /// Kernel log lines written after `marker` (which this call writes first
    /// when `mark` is true, through /dev/kmsg).
    static func kernelLog(after marker: String) -> [String] {
        let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var lines: [String] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 {
                if errno == EPIPE { continue }  // overwritten records: keep reading
                break
            }
            if n == 0 { break }
            let record = String(decoding: buf[0..<n], as: UTF8.self)
            // "prio,seq,usec,flags;message"
            if let semi = record.firstIndex(of: ";") { lines.append(String(record[record.index(after: semi)...]).trimmingCharacters(in: .newlines)) }
        }
        guard let i = lines.lastIndex(where: { $0.contains(marker) }) else { return [] }
        return Array(lines[(i + 1)...])
    }

    static func markKernelLog(_ marker: String) {
        let fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = marker.withCString { write(fd, $0, strlen($0)) }
    }
}

/// Runs the built tools (next to the test bundle: .build/debug/vfioctl, vfio-nvme).
enum Tool {
    struct Result {
        var status: Int32
        var out: Data
        var err: String
        var text: String { String(decoding: out, as: UTF8.self) }
        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: out) as? [String: Any], "not JSON: \(text) \(err)")
        }
    }

    static var directory: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
    }

    static func vfioctl(_ args: String...) throws -> Result { try run(directory + "/vfioctl", args) }
    static func nvme(_ args: String..., stdin: Data? = nil) throws -> Result { try run(directory + "/vfio-nvme", args, stdin: stdin) }

    /// Runs `exe` with posix_spawn (Foundation's Process needs a socketpair the
    /// guest cannot make), stdin from `stdin`, stdout and stderr into files.
    static func run(_ exe: String, _ args: [String], stdin: Data? = nil, environment: [String: String]? = nil) throws -> Result {
        let tag = UUID().uuidString
        let base = NSTemporaryDirectory() + "nvme-tool-\(tag)"
        let inPath = base + ".in", outPath = base + ".out", errPath = base + ".err"
        defer { unlink(inPath); unlink(outPath); unlink(errPath) }
        try (stdin ?? Data()).write(to: URL(fileURLWithPath: inPath))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, inPath, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let env: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { env?.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = env.map { e in posix_spawn(&pid, exe, &actions, nil, argv, e) } ?? posix_spawn(&pid, exe, &actions, nil, argv, environ)
        try #require(rc == 0, "posix_spawn \(exe): \(rc)")
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let out = (try? Data(contentsOf: URL(fileURLWithPath: outPath))) ?? Data()
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return Result(status: code, out: out, err: err)
    }

    /// Binds `bdf` to vfio-pci with `vfioctl bind` (failing the test if it does not take).
    static func bind(_ bdf: String) throws {
        let r = try vfioctl("bind", bdf)
        try #require(r.status == 0, "vfioctl bind \(bdf): \(r.err)")
        try #require(Guest.driver(of: bdf) == "vfio-pci")
    }

    /// `vfioctl unbind --restore`: back to the kernel's nvme driver.
    static func restore(_ bdf: String) throws {
        let r = try vfioctl("unbind", bdf, "--restore")
        try #require(r.status == 0, "vfioctl unbind \(bdf) --restore: \(r.err)")
    }
}

/// Where two byte arrays first differ, as short text (nil when equal).
func difference(_ got: [UInt8], _ expected: [UInt8]) -> String? { firstDifference(got, expected) }
