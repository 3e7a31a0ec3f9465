import ArgumentParser
import Foundation
import NVMeDriver
import Synchronization

/// `vfio-nvme`: an NVMe controller driven from userspace through VFIOKit.
@main
struct VFIONVMe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio-nvme",
        abstract: "Drive an NVMe controller from userspace through VFIO (VFIOKit's NVMe driver).",
        discussion: """
            The controller must be bound to vfio-pci first (`vfioctl bind BDF`); \
            `vfioctl unbind BDF --restore` gives it back to the kernel's nvme driver \
            afterwards. vfio-nvme shuts the controller down cleanly (CC.SHN) on exit, \
            on errors and on SIGINT/SIGTERM.

            Every command takes --json (stable keys), --mode (the DMA mode: best, \
            iommufd, type1v2, compatType1v2, type1, compatType1), --poll (poll for \
            completions instead of MSI-X interrupts) and --timeout (for every command \
            and register transition). Exit status: 0 on success, 1 on failure, 64 for \
            usage errors.

            Examples:
              vfioctl bind 0000:00:05.0
              vfio-nvme identify 0000:00:05.0
              vfio-nvme read 0000:00:05.0 --lba 0 --count 8 | hexdump -C | head
              head -c 4096 /dev/urandom | vfio-nvme write 0000:00:05.0 --lba 2048
              vfio-nvme perf 0000:00:05.0 --qd 32 --bs 4k --time 10s
              vfio-nvme perf 0000:00:05.0 --qd 1 --bs 512 --time 5s --poll --mode iommufd --json
              vfioctl unbind 0000:00:05.0 --restore
            """,
        version: "0.1.0",
        subcommands: [IdentifyCommand.self, ReadCommand.self, WriteCommand.self, PerfCommand.self]
    )
}

/// What every command takes to open the controller.
struct ControllerOptions: ParsableArguments {
    @Argument(help: "PCI address of the NVMe controller, bound to vfio-pci (0000:00:05.0 or 00:05.0).")
    var bdf: String

    @Option(help: "DMA mode: best, \(NVMeDMAMode.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mode: String = "best"

    @Flag(help: "Poll for completions instead of waiting for MSI-X interrupts.")
    var poll = false

    @Option(help: "Timeout for each command and register transition (5s, 500ms, 2m).")
    var timeout: String = "5s"

    @Flag(help: "Print JSON with stable keys instead of text.")
    var json = false

    func validate() throws {
        if mode != "best" && NVMeDMAMode(rawValue: mode) == nil {
            throw ValidationError("--mode must be best or one of \(NVMeDMAMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if parseDuration(timeout) == nil { throw ValidationError("--timeout must be a duration such as 5s, 500ms or 2m") }
    }

    func options(queueDepth: Int = 128) -> NVMeController.Options {
        NVMeController.Options(mode: NVMeDMAMode(rawValue: mode), interrupts: !poll, ioQueueCount: 1,
                               queueDepth: queueDepth, timeout: parseDuration(timeout) ?? .seconds(5))
    }

    /// Opens the controller, runs `body`, and closes it (shutdown) on every path.
    func withController<R>(queueDepth: Int = 128, _ body: (NVMeController) throws -> R) throws -> R {
        Signals.install()
        let controller: NVMeController
        do { controller = try NVMeController(address: bdf, options: options(queueDepth: queueDepth)) } catch {
            throw Failure(error: error, json: json)
        }
        let result: R
        do {
            result = try body(controller)
        } catch let e as NVMeError {
            try? controller.close()
            throw Failure(error: e, json: json)
        } catch {
            try? controller.close()
            throw error
        }
        do { try controller.close() } catch { throw Failure(error: error, json: json) }
        return result
    }
}

/// SIGINT/SIGTERM set a flag that the commands check between I/Os, so the
/// controller is always shut down and released.
enum Signals {
    static let stop = Atomic<Bool>(false)
    static var requested: Bool { stop.load(ordering: .relaxed) }

    static func install() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM] {
            signal(s) { _ in Signals.stop.store(true, ordering: .relaxed) }
            sigaddset(&set, s)
        }
        // A parent may have started us with them blocked (the mask is inherited).
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}

/// A driver error, printed as text or JSON, exit status 1.
struct Failure: Error, CustomStringConvertible {
    var error: NVMeError
    var json: Bool

    var description: String { json ? "" : "vfio-nvme: \(error)" }
}

extension Failure {
    init(error: any Error, json: Bool) {
        self.init(error: error as? NVMeError ?? NVMeError(.invalidArgument, "\(error)"), json: json)
    }

    /// Prints the error (JSON on stdout with --json) and exits 1.
    func exit() -> Never {
        if json {
            var o: [String: Any] = ["error": error.message, "kind": "\(error.kind)"]
            if let d = error.device { o["address"] = d }
            if let h = error.hint { o["hint"] = h }
            printJSON(o)
        } else {
            FileHandle.standardError.write(Data((description + "\n").utf8))
        }
        Foundation.exit(1)
    }
}

extension ParsableCommand {
    /// Runs `body`; a driver error is printed and exits 1 (other errors go to ArgumentParser).
    func reporting(_ body: () throws -> Void) throws {
        do { try body() } catch let f as Failure { f.exit() }
    }
}

/// "5s", "500ms", "2m", "1.5s", "10" (seconds).
func parseDuration(_ text: String) -> Duration? {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("s", 1), ("m", 60), ("h", 3600)]
    for (suffix, scale) in units where t.hasSuffix(suffix) {
        guard let v = Double(t.dropLast(suffix.count)), v >= 0, v.isFinite else { return nil }
        return .nanoseconds(Int64(v * scale * 1e9))
    }
    guard let v = Double(t), v >= 0, v.isFinite else { return nil }
    return .nanoseconds(Int64(v * 1e9))
}

/// "4k", "4KiB", "512", "1m" to bytes.
func parseSize(_ text: String) -> Int? {
    var t = text.trimmingCharacters(in: .whitespaces).lowercased()
    for s in ["ib", "b"] where t.hasSuffix(s) && t.count > s.count { t.removeLast(s.count) }
    var scale = 1
    if let last = t.last, let i = "kmg".firstIndex(of: last) {
        scale = 1 << (10 * ("kmg".distance(from: "kmg".startIndex, to: i) + 1))
        t.removeLast()
    }
    guard let v = Int(t), v > 0 else { return nil }
    let (r, o) = v.multipliedReportingOverflow(by: scale)
    return o ? nil : r
}

func printJSON(_ object: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data("{}".utf8)
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

/// 12,345
func grouped(_ v: Double) -> String {
    let n = Int(v.rounded())
    let s = String(n)
    var out = ""
    for (i, c) in s.reversed().enumerated() {
        if i > 0 && i % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return String(out.reversed())
}
