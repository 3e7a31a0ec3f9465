import ArgumentParser
import Testing
import VFIOCommands
import VFIOKit

/// Every remedy vfioctl words as a `vfioctl ...` command parses with
/// vfioctl's own command tree: a hint that does not parse is a failing test.
@Suite struct RemedyWordingTests {
    /// One remedy of every kind (and every `vfioctl` form: with and without an
    /// address, forced, nested).
    static func samples() throws -> [Remedy] {
        let a = try PCIAddress(parsing: "0000:01:02.0")
        let b = try PCIAddress(parsing: "0000:00:04.0")
        return [
            .bindToVFIO(a), .bindToVFIO(nil), .bindGroup(a), .bindGroup(nil),
            .bindBridgeToStub(b, driver: "shpchp"), .bindBridgeToStub(b, driver: nil),
            .forced(.bindToVFIO(a)), .forced(.bindGroup(a)), .forced(.unbindDriver(a)), .forced(.restoreDriver(a)),
            .forced(.advice("take it")),
            .unbindDriver(a), .restoreDriver(a),
            .stopProcesses([.init(pid: 4242, command: "qemu-system-x86")]), .unmount(["/mnt/my data"]),
            .swapOff("/dev/nvme0n1p2"), .stopStackedDevices(["dm-0", "md127"]), .linkDown("eth0"), .moveConsole,
            .raiseMemlock(atLeast: 1 << 30), .raiseMemlock(atLeast: nil), .showMemlock,
            .reserveHugePages(count: 512, pool: "hugepages-2048kB"), .addHugePages(count: 16),
            .grantAccess(path: "/dev/vfio/7", uid: 1000), .grantAccess(path: "/dev/vfio/7", uid: nil), .runPrivileged,
            .takeOwnership(path: "/run/vfiokit/bindings", uid: 0), .restrictMode(path: "/run/vfiokit/bindings"),
            .removeGroupWrite(path: "/run/vfiokit"), .removePath("/run/vfiokit/bindings/x.json", recursive: false),
            .enableIOMMU, .enableInterruptRemapping(virtioIOMMU: true), .enableInterruptRemapping(virtioIOMMU: false),
            .allowUnsafeInterrupts(parameter: "iommufd.allow_unsafe_interrupts"),
            .kernelConfig(["CONFIG_IOMMUFD"], since: KernelVersion(6, 2)), .loadModule("vfio-pci"),
            .newerKernel(lacking: [.iommuVEventQAlloc], running: "6.12.1"), .readKernelLog(matching: ["vfio"]),
            .inspect(path: "/sys/bus/pci/devices/0000:01:02.0/"), .diagnose(a), .diagnose(nil), .findHolder(a),
            .findHolder(nil), .listDevices, .rescanPCI, .listGroups, .showDevice(a), .hotReset(a), .advice("call bind(to:) first"),
        ]
    }

    /// The `vfioctl` command lines in a text: each backticked span that starts with `vfioctl `.
    static func vfioctlCommands(in text: String) -> [String] {
        text.split(separator: "`", omittingEmptySubsequences: false).enumerated()
            .filter { $0.offset % 2 == 1 && $0.element.hasPrefix("vfioctl ") }.map { String($0.element) }
    }

    /// Parses one command line (no quoting in vfioctl's own commands) as vfioctl would.
    static func parses(_ line: String) -> (any Error)? {
        let words = line.split(separator: " ").map(String.init)
        guard words.first == "vfioctl" else { return ValidationError("not a vfioctl command: \(line)") }
        do {
            _ = try VFIOCtl.parseAsRoot(Array(words.dropFirst()))
            return nil
        } catch {
            return error
        }
    }

    @Test func everyKindHasASample() throws {
        #expect(Set(try Self.samples().map(\.kind)) == Set(Remedy.Kind.allCases))
    }

    @Test func everyWordedVfioctlCommandParses() throws {
        var checked = 0
        for r in try Self.samples() {
            let texts = [CLIWording.command(r).map { "`\($0)`" }, CLIWording.text([r])].compactMap { $0 }
            for line in texts.flatMap(Self.vfioctlCommands(in:)) {
                checked += 1
                let failure = Self.parses(line)
                #expect(failure == nil, "\(r.kind): `\(line)` does not parse: \(String(describing: failure))")
            }
            // The library's own words never name vfioctl.
            #expect(!r.description.contains("vfioctl"), "\(r.kind): \(r.description)")
        }
        #expect(checked >= 20)
        // Sequences ("run `a`, then `b`") too.
        let a = try PCIAddress(parsing: "0000:01:02.0")
        let steps = CLIWording.text([.unbindDriver(a), .bindToVFIO(a), .forced(.bindToVFIO(a))]) ?? ""
        #expect(Self.vfioctlCommands(in: steps).count == 3)
        for line in Self.vfioctlCommands(in: steps) { #expect(Self.parses(line) == nil, "`\(line)`") }
    }

    /// The check can fail: a wrong command does not parse.
    @Test func aCommandThatDoesNotParseIsCaught() {
        #expect(Self.parses("vfioctl bind 0000:01:02.0 --no-such-option") != nil)
        #expect(Self.parses("vfioctl unbind") != nil)
        #expect(Self.parses("vfioctl frobnicate") != nil)
    }
}
