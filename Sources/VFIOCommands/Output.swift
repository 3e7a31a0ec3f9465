import ArgumentParser
import Foundation
import Synchronization
import VFIOKit

/// Where commands write. Normally stdout and stderr; tests install a capture.
public enum CommandOutput {
    /// Text collected instead of printed (tests).
    public final class Capture: Sendable {
        private let state = Mutex<(out: String, err: String)>(("", ""))
        public init() {}
        public var stdout: String { state.withLock { $0.out } }
        public var stderr: String { state.withLock { $0.err } }
        func append(_ s: String, error: Bool) {
            state.withLock { if error { $0.err += s } else { $0.out += s } }
        }
    }

    @TaskLocal public static var capture: Capture?

    /// Runs `body` with output captured; returns its result and the capture.
    public static func capturing<R>(_ body: () throws -> R) rethrows -> (R, Capture) {
        let c = Capture()
        let r = try $capture.withValue(c) { try body() }
        return (r, c)
    }

    /// Writes a line to stdout.
    public static func out(_ s: String) {
        if let c = capture { c.append(s + "\n", error: false) } else { print(s) }
    }

    /// Writes a line to stderr.
    public static func err(_ s: String) {
        if let c = capture { c.append(s + "\n", error: true); return }
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}

/// `--json`, shared by every command.
public struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print JSON with stable keys instead of text.")
    public var json = false

    public init() {}
}

/// Where to find sysfs, procfs and /dev (hidden; for tests on fixture trees).
public struct HostOptions: ParsableArguments {
    @Option(name: .customLong("sysfs-root"), help: ArgumentHelp("Directory that stands for / (tests).", visibility: .hidden))
    public var root: String = "/"

    public init() {}

    /// For tests on fixture trees: the fake kernel that reacts to sysfs writes
    /// under `--sysfs-root`, so a printed `vfioctl bind ...` can be run as printed.
    /// Never used with the real root.
    @TaskLocal public static var fixtureKernel: (any SysfsWriteHandler)?

    public var host: PCIHost { PCIHost(root: root, sysfsWriter: root == "/" ? nil : HostOptions.fixtureKernel) }
}

enum JSON {
    /// Pretty, key-sorted JSON of `value`; remedies inside are worded as vfioctl commands.
    static func render<T: Encodable>(_ value: T) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        enc.userInfo[RemedyWording.key] = CLIWording.wording
        guard let data = try? enc.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// The JSON form of an error, `{"error": ERROR}`, where ERROR has:
/// `message` (the first line of the text), `operation` (its name:
/// `IOMMU_IOAS_MAP`, `open`, `bind`), `operation_kind` (`ioctl`, `syscall` or
/// `step`), `errno` (the number or null), `errno_name` (`ENOMEM` or null),
/// `object`, `detail`, `hint` (the remedies as vfioctl prints them, or null)
/// and `remedies` (each `{"kind": KIND, ...}` with its facts: see
/// ``ErrorJSON/remedyKeys``).
struct ErrorJSON: Encodable {
    /// The keys of one remedy object, documented in `--help`.
    static let remedyKeys = "kind (bind-to-vfio, bind-group, bind-bridge-to-stub, forced, unbind-driver, restore-driver, "
        + "stop-processes, unmount, swap-off, stop-stacked-devices, link-down, move-console, raise-memlock, show-memlock, "
        + "reserve-huge-pages, add-huge-pages, grant-access, run-privileged, take-ownership, restrict-mode, "
        + "remove-group-write, remove-path, enable-iommu, enable-interrupt-remapping, allow-unsafe-interrupts, "
        + "kernel-config, load-module, newer-kernel, read-kernel-log, inspect, diagnose, find-holder, list-devices, rescan-pci, "
        + "list-groups, show-device, hot-reset, advice) and its facts: address, driver, remedy, processes (pid, "
        + "command), paths, device, names, interface, bytes, count, pool, path, uid, recursive, virtio_iommu, "
        + "parameter, options, since, module, requests, running, words, text"

    struct Body: Encodable {
        var error: VFIOError
        enum CodingKeys: String, CodingKey {
            case message, operation, errno, object, detail, hint, remedies
            case operationKind = "operation_kind", errnoName = "errno_name"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(error.summary, forKey: .message)
            try c.encode(error.operation.description, forKey: .operation)
            let kind = switch error.operation {
            case .ioctl: "ioctl"
            case .syscall: "syscall"
            case .step: "step"
            }
            try c.encode(kind, forKey: .operationKind)
            try c.encode(error.errno?.rawValue, forKey: .errno)
            try c.encode(error.errno?.name, forKey: .errnoName)
            try c.encode(error.object, forKey: .object)
            try c.encode(error.detail, forKey: .detail)
            try c.encode(CLIWording.text(error.remedies), forKey: .hint)
            try c.encode(error.remedies, forKey: .remedies)
        }
    }
    var error: Body
}

/// Runs a command body; a VFIOError becomes one clear message (plus hint) and exit status 1.
func reporting(json: Bool, _ body: () throws(VFIOError) -> Void) throws {
    do {
        try body()
    } catch {
        if json {
            CommandOutput.out(JSON.render(ErrorJSON(error: .init(error: error))))
        }
        CommandOutput.err("error: " + CLIWording.message(error))
        throw ExitCode.failure
    }
}

/// Parses a BDF argument in `validate()`, with the expected form in the message.
func validateAddress(_ text: String) throws {
    do { _ = try PCIAddress(parsing: text) } catch {
        throw ValidationError((error.detail ?? "invalid PCI address") + "; write it as " + PCIAddress.expectedForm)
    }
}

/// Left-aligned columns with two spaces between them.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    var widths = [Int](repeating: 0, count: header.count)
    for r in all { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    return all.map { r in
        r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}
