import ArgumentParser
import Foundation
import NVMeDriver

struct IdentifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identify",
        abstract: "Print the controller's and its namespaces' identity (like nvme id-ctrl and id-ns).",
        discussion: """
            Model, serial number, firmware, the controller's limits, and for each active \
            namespace its size, LBA formats, block size and capacity.

            JSON keys: address, mode, interrupts, vid, ssvid, sn, mn, fr, ieee, cntlid, ver, \
            mdts, max_transfer_bytes, rtd3e_us, sqes, cqes, maxcmd, nn, oncs, vwc, subnqn, \
            cap {raw, mqes, timeout_ms, doorbell_stride, mpsmin, mpsmax}, namespaces [{nsid, \
            nsze, ncap, nuse, flbas, lba_size, metadata_size, capacity_bytes, lbafs [{ms, \
            lbads, rp, in_use}]}].

            Examples:
              vfio-nvme identify 0000:00:05.0
              vfio-nvme identify 00:05.0 --json
            """)

    @OptionGroup var controller: ControllerOptions

    func run() throws {
        try reporting {
            try controller.withController { c in
                if controller.json { printJSON(json(c)) } else { print(text(c)) }
            }
        }
    }

    func json(_ c: NVMeController) -> [String: Any] {
        let id = c.identity, cap = c.capabilities
        return [
            "address": c.address, "mode": c.mode.rawValue, "interrupts": c.interruptVectors > 0,
            "vid": hex(id.vendorID), "ssvid": hex(id.subsystemVendorID), "sn": id.serialNumber, "mn": id.modelNumber,
            "fr": id.firmwareRevision, "ieee": hex(id.ieeeOUI, 6), "cntlid": Int(id.controllerID),
            "ver": c.version.description, "mdts": Int(id.maxDataTransferShift), "max_transfer_bytes": c.maxTransferBytes,
            "rtd3e_us": Int(id.rtd3EntryLatency), "sqes": hex(id.submissionEntrySizes), "cqes": hex(id.completionEntrySizes),
            "maxcmd": Int(id.maxCommands), "nn": Int(id.namespaceCount), "oncs": hex(id.optionalNVMCommands),
            "vwc": hex(id.volatileWriteCache), "subnqn": id.subsystemNQN,
            "cap": [
                "raw": hex(cap.raw, 16), "mqes": cap.maxQueueEntries - 1,
                "timeout_ms": Int(cap.readyTimeout.components.seconds * 1000 + cap.readyTimeout.components.attoseconds / 1_000_000_000_000_000),
                "doorbell_stride": cap.doorbellStride, "mpsmin": cap.minPageSize, "mpsmax": cap.maxPageSize,
            ] as [String: Any],
            "namespaces": c.namespaces.map { ns -> [String: Any] in
                [
                    "nsid": Int(ns.id), "nsze": ns.size, "ncap": ns.capacity, "nuse": ns.utilization, "flbas": ns.formatIndex,
                    "lba_size": ns.blockSize, "metadata_size": ns.format.metadataSize, "capacity_bytes": ns.sizeInBytes,
                    "lbafs": ns.formats.enumerated().map { i, f -> [String: Any] in
                        ["ms": f.metadataSize, "lbads": f.dataShift, "rp": f.relativePerformance, "in_use": i == ns.formatIndex]
                    },
                ]
            },
        ]
    }

    func text(_ c: NVMeController) -> String {
        let id = c.identity, cap = c.capabilities
        var lines: [String] = []
        func row(_ k: String, _ v: String) { lines.append(k.padding(toLength: 10, withPad: " ", startingAt: 0) + ": " + v) }
        lines.append("NVMe controller \(c.address), \(c.mode), "
                     + (c.interruptVectors > 0 ? "\(c.interruptVectors) MSI-X vectors" : "polling"))
        row("vid", hex(id.vendorID))
        row("ssvid", hex(id.subsystemVendorID))
        row("sn", id.serialNumber)
        row("mn", id.modelNumber)
        row("fr", id.firmwareRevision)
        row("ieee", hex(id.ieeeOUI, 6))
        row("cntlid", "\(id.controllerID)")
        row("ver", c.version.description)
        row("mdts", "\(id.maxDataTransferShift)" + (id.maxDataTransferShift == 0 ? " (no limit)" : " (\(formatSize(UInt64(c.maxTransferBytes))) per command)"))
        row("rtd3e", "\(id.rtd3EntryLatency) us")
        row("sqes", hex(id.submissionEntrySizes))
        row("cqes", hex(id.completionEntrySizes))
        row("maxcmd", "\(id.maxCommands)")
        row("nn", "\(id.namespaceCount)")
        row("oncs", hex(id.optionalNVMCommands))
        row("vwc", hex(id.volatileWriteCache))
        row("subnqn", id.subsystemNQN)
        row("cap", "\(hex(cap.raw, 16)) (mqes \(cap.maxQueueEntries - 1), to \(cap.readyTimeout), dstrd \(cap.doorbellStride) bytes, "
            + "mps \(formatSize(UInt64(cap.minPageSize)))-\(formatSize(UInt64(cap.maxPageSize))))")
        lines.append("")
        lines.append("\(c.namespaces.count) active namespace\(c.namespaces.count == 1 ? "" : "s")")
        for ns in c.namespaces {
            lines.append("namespace \(ns.id):")
            row("  nsze", "\(ns.size)")
            row("  ncap", "\(ns.capacity)")
            row("  nuse", "\(ns.utilization)")
            row("  flbas", "\(ns.formatIndex)")
            for (i, f) in ns.formats.enumerated() {
                lines.append("  lbaf \(String(i).leftPad(2)) : ms:\(String(f.metadataSize).rightPad(3)) lbads:\(String(f.dataShift).rightPad(2)) "
                             + "rp:\(f.relativePerformance)\(i == ns.formatIndex ? " (in use)" : "")")
            }
            row("  LBA size", "\(ns.blockSize) bytes")
            row("  capacity", "\(formatSize(ns.sizeInBytes)) (\(ns.sizeInBytes) bytes, \(ns.size) blocks)")
        }
        return lines.joined(separator: "\n")
    }
}

func hex<T: BinaryInteger>(_ v: T, _ digits: Int = 0) -> String {
    let s = String(v, radix: 16)
    return "0x" + (s.count < digits ? String(repeating: "0", count: digits - s.count) + s : s)
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
    func rightPad(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}
