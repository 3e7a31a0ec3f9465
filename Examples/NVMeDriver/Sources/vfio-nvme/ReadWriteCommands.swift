import ArgumentParser
import Foundation
import NVMeDriver

struct ReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read logical blocks and write them to stdout.",
        discussion: """
            Reads --count blocks from --lba of the namespace (its block size: see \
            `vfio-nvme identify`), in commands of at most the controller's transfer size. \
            With --json, prints {address, namespace, lba, count, block_size, bytes, data} \
            with the data in base64 instead of raw bytes.

            Examples:
              vfio-nvme read 0000:00:05.0 --lba 0 --count 1 | hexdump -C
              vfio-nvme read 0000:00:05.0 --lba 2048 --count 256 > blocks.bin
              vfio-nvme read 0000:00:05.0 --lba 0 --count 8 --json
            """)

    @OptionGroup var controller: ControllerOptions
    @Option(help: "First logical block.") var lba: UInt64
    @Option(help: "Number of logical blocks.") var count: Int
    @Option(help: "Namespace id.") var namespace: UInt32 = 1

    func validate() throws {
        if count < 1 { throw ValidationError("--count must be at least 1") }
    }

    func run() throws {
        try reporting {
            try controller.withController { c in
                let ns = try c.namespace(namespace)
                guard lba < ns.size, UInt64(count) <= ns.size - lba else {
                    throw NVMeError(.invalidArgument, "blocks \(lba)..<\(lba + UInt64(count)) are outside namespace \(namespace) "
                                        + "(\(ns.size) blocks of \(ns.blockSize) bytes)", device: c.address)
                }
                let perCommand = max(1, c.maxTransferBytes / ns.blockSize)
                let buffer = try c.makeBuffer(bytes: min(count, perCommand) * ns.blockSize)
                var data = Data()
                var done = 0
                while done < count {
                    if Signals.requested { throw NVMeError(.interrupted, "interrupted after \(done) blocks", device: c.address) }
                    let n = min(perCommand, count - done)
                    try c.queue(0).read(namespace: namespace, lba: lba + UInt64(done), blocks: n, into: buffer)
                    let chunk = Data(buffer.bytes.prefix(n * ns.blockSize))
                    if controller.json { data.append(chunk) } else { FileHandle.standardOutput.write(chunk) }
                    done += n
                }
                if controller.json {
                    printJSON(["address": c.address, "namespace": Int(namespace), "lba": lba, "count": count,
                               "block_size": ns.blockSize, "bytes": data.count, "data": data.base64EncodedString()] as [String: Any])
                }
            }
        }
    }
}

struct WriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write stdin to logical blocks, then flush.",
        discussion: """
            Reads stdin to its end and writes it from --lba on; its length must be a \
            multiple of the namespace's block size. A Flush follows, so the data is on \
            the medium when the command returns. With --json, prints {address, namespace, \
            lba, count, block_size, bytes}.

            Examples:
              head -c 4096 /dev/urandom | vfio-nvme write 0000:00:05.0 --lba 2048
              dd if=file.bin bs=512 conv=sync | vfio-nvme write 0000:00:05.0 --lba 0 --json
            """)

    @OptionGroup var controller: ControllerOptions
    @Option(help: "First logical block.") var lba: UInt64
    @Option(help: "Namespace id.") var namespace: UInt32 = 1

    func run() throws {
        try reporting {
            let input = FileHandle.standardInput.readDataToEndOfFile()
            try controller.withController { c in
                let ns = try c.namespace(namespace)
                guard !input.isEmpty, input.count % ns.blockSize == 0 else {
                    throw NVMeError(.invalidArgument, "stdin has \(input.count) bytes; writes take whole \(ns.blockSize)-byte blocks",
                                    device: c.address,
                                    hint: "pad the input to a multiple of \(ns.blockSize) bytes, e.g. `dd if=FILE bs=\(ns.blockSize) conv=sync | vfio-nvme write \(c.address) --lba \(lba)`")
                }
                let count = input.count / ns.blockSize
                guard lba < ns.size, UInt64(count) <= ns.size - lba else {
                    throw NVMeError(.invalidArgument, "blocks \(lba)..<\(lba + UInt64(count)) are outside namespace \(namespace) "
                                        + "(\(ns.size) blocks of \(ns.blockSize) bytes)", device: c.address)
                }
                let perCommand = max(1, c.maxTransferBytes / ns.blockSize)
                let buffer = try c.makeBuffer(bytes: min(count, perCommand) * ns.blockSize)
                var done = 0
                while done < count {
                    if Signals.requested { throw NVMeError(.interrupted, "interrupted after \(done) blocks", device: c.address) }
                    let n = min(perCommand, count - done)
                    let start = input.startIndex + done * ns.blockSize
                    buffer.write(input[start..<(start + n * ns.blockSize)])
                    try c.queue(0).write(namespace: namespace, lba: lba + UInt64(done), blocks: n, from: buffer)
                    done += n
                }
                try c.queue(0).flush(namespace: namespace)
                if controller.json {
                    printJSON(["address": c.address, "namespace": Int(namespace), "lba": lba, "count": count,
                               "block_size": ns.blockSize, "bytes": input.count] as [String: Any])
                } else {
                    print("wrote \(count) block\(count == 1 ? "" : "s") (\(input.count) bytes) at LBA \(lba) of namespace \(namespace) on \(c.address), flushed")
                }
            }
        }
    }
}
