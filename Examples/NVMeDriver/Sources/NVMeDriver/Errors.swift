/// Everything the driver throws: what failed, on which controller, and what
/// would fix it.
///
/// The I/O path throws only on failure; building the message allocates, a
/// successful command never does.
public struct NVMeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The PCI function is not an NVMe controller (class code is not 0x010802).
        case notNVMe
        /// The function is not bound to vfio-pci (the kernel's nvme driver, or none, has it).
        case notBoundToVFIO
        /// No PCI function at that address.
        case noSuchDevice
        /// CSTS.CFS: the controller reported a fatal status.
        case controllerFatal
        /// A register transition or a command did not finish in time.
        case timeout
        /// The controller completed a command with an error status.
        case commandFailed(NVMeStatus)
        /// An earlier unrecoverable timeout reset the controller; ``NVMeController/reset()`` brings it back.
        case controllerFailed
        /// The controller lacks something the driver needs (the NVM command set, 4 KiB pages, ...).
        case unsupported
        /// The caller asked for something impossible (a transfer past the end of the buffer, ...).
        case invalidArgument
        /// VFIOKit failed underneath (opening the device, mapping memory, interrupts).
        case vfio
        /// Stopped on request (SIGINT/SIGTERM in the tool).
        case interrupted
        /// The controller was closed.
        case closed
    }

    public var kind: Kind
    /// What happened, in one sentence.
    public var message: String
    /// The controller (PCI address), when known.
    public var device: String?
    /// What to do about it, when there is something to do.
    public var hint: String?

    public init(_ kind: Kind, _ message: String, device: String? = nil, hint: String? = nil) {
        self.kind = kind
        self.message = message
        self.device = device
        self.hint = hint
    }

    public var description: String {
        var s = device.flatMap { message.hasPrefix($0) ? nil : "\($0): " } ?? ""
        s += message
        if let hint { s += "\n  hint: \(hint)" }
        return s
    }
}

/// The status field of a completion queue entry (DW3 bits 31:17): status code,
/// status code type, command retry delay, more, do not retry.
public struct NVMeStatus: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// The 15-bit field as the controller wrote it.
    public var raw: UInt16

    public init(raw: UInt16) { self.raw = raw & 0x7fff }

    public static let success = NVMeStatus(raw: 0)

    /// SC: the status code.
    public var code: UInt8 { UInt8(truncatingIfNeeded: raw) }
    /// SCT: 0 generic, 1 command specific, 2 media and data integrity, 3 path related, 7 vendor.
    public var type: UInt8 { UInt8(truncatingIfNeeded: (raw >> 8) & 0x7) }
    /// DNR: retrying the same command will fail again.
    public var doNotRetry: Bool { raw & 0x4000 != 0 }
    public var isSuccess: Bool { raw & 0x7ff == 0 }

    /// Generic status 0x04: the controller could not move the data (with an
    /// IOMMU, typically a DMA fault on an address that is not mapped).
    public var isDataTransferError: Bool { type == 0 && code == 0x04 }
    /// Generic status 0x07: the command was aborted by an Abort command.
    public var isAbortRequested: Bool { type == 0 && code == 0x07 }

    /// The NVMe base specification's name for the status (2.0, figures 101-104).
    public var name: String {
        switch (type, code) {
        case (0, 0x00): "Successful Completion"
        case (0, 0x01): "Invalid Command Opcode"
        case (0, 0x02): "Invalid Field in Command"
        case (0, 0x03): "Command ID Conflict"
        case (0, 0x04): "Data Transfer Error"
        case (0, 0x05): "Commands Aborted due to Power Loss Notification"
        case (0, 0x06): "Internal Error"
        case (0, 0x07): "Command Abort Requested"
        case (0, 0x08): "Command Aborted due to SQ Deletion"
        case (0, 0x09): "Command Aborted due to Failed Fused Command"
        case (0, 0x0a): "Command Aborted due to Missing Fused Command"
        case (0, 0x0b): "Invalid Namespace or Format"
        case (0, 0x0c): "Command Sequence Error"
        case (0, 0x0d): "Invalid SGL Segment Descriptor"
        case (0, 0x0f): "Invalid Number of SGL Descriptors"
        case (0, 0x13): "Invalid PRP Offset"
        case (0, 0x80): "LBA Out of Range"
        case (0, 0x81): "Capacity Exceeded"
        case (0, 0x82): "Namespace Not Ready"
        case (1, 0x00): "Completion Queue Invalid"
        case (1, 0x01): "Invalid Queue Identifier"
        case (1, 0x02): "Invalid Queue Size"
        case (1, 0x03): "Abort Command Limit Exceeded"
        case (1, 0x08): "Invalid Interrupt Vector"
        case (1, 0x0b): "Invalid Namespace or Format"
        case (1, 0x0d): "Feature Identifier Not Saveable"
        case (1, 0x0e): "Feature Not Changeable"
        case (2, 0x80): "Write Fault"
        case (2, 0x81): "Unrecovered Read Error"
        case (2, 0x86): "Access Denied"
        default: "status type \(type) code 0x\(String(code, radix: 16))"
        }
    }

    public var description: String {
        "\(name) (SCT \(type), SC 0x\(String(code, radix: 16, uppercase: false))\(doNotRetry ? ", DNR" : ""))"
    }
}
