// Everything the driver needs from VFIOKit, and nothing else, lives in this
// file: opening the controller in a DMA mode, BAR0, bus mastering, DMA
// memory with IOVAs, MSI-X vectors and their waits, barriers. The rest of the
// driver sees only the small types below, so moving to another way of
// opening devices means changing this file alone.

import VFIOKit

/// The five ways Linux gives a device an IOMMU address space (VFIOKit's
/// `DMAMode`, under the same names).
public enum NVMeDMAMode: String, CaseIterable, Sendable, CustomStringConvertible {
    case type1, type1v2, compatType1, compatType1v2, iommufd

    var vfio: DMAMode {
        switch self {
        case .type1: .type1
        case .type1v2: .type1v2
        case .compatType1: .compatType1
        case .compatType1v2: .compatType1v2
        case .iommufd: .iommufd
        }
    }

    init(_ m: DMAMode) {
        switch m {
        case .type1: self = .type1
        case .type1v2: self = .type1v2
        case .compatType1: self = .compatType1
        case .compatType1v2: self = .compatType1v2
        case .iommufd: self = .iommufd
        }
    }

    public var description: String { vfio.description }

    /// The modes this kernel offers.
    public static func available() -> [NVMeDMAMode] { DMAMode.available().map(NVMeDMAMode.init) }
}

/// Orders the driver's stores to DMA memory (a submission queue entry, a PRP
/// list) before later stores: VFIOKit's `dma_wmb`. (An `MMIORegion` store has
/// this barrier built in, as Linux's `writel`; the queues still call it before
/// a doorbell to say what they rely on.)
@inline(__always) func writeBarrier() { DMABuffer.writeBarrier() }

/// Orders the load of a completion entry's phase bit before the loads of the
/// rest of the entry: VFIOKit's `dma_rmb` (a compiler barrier on x86-64, so it
/// also keeps the phase load inside a polling loop).
@inline(__always) func readBarrier() { DMABuffer.readBarrier() }

/// BAR0: the controller's registers and doorbells. Every access is a
/// VFIOKit `MMIORegion` load or store (bounds-checked, one `mov`).
struct Registers: @unchecked Sendable {
    // @unchecked: device registers are shared mutable state by nature; the
    // driver orders its own accesses.
    let region: MMIORegion

    @inline(__always) func load32(_ offset: Int) -> UInt32 { region.load32(at: offset) }
    @inline(__always) func store32(_ value: UInt32, _ offset: Int) { region.store32(value, at: offset) }
    /// 64-bit registers as two 32-bit accesses, low half first (as Linux's
    /// `lo_hi_readq`), which every controller accepts.
    @inline(__always) func load64(_ offset: Int) -> UInt64 {
        UInt64(region.load32(at: offset)) | UInt64(region.load32(at: offset + 4)) << 32
    }
    @inline(__always) func store64(_ value: UInt64, _ offset: Int) {
        region.store32(UInt32(truncatingIfNeeded: value), at: offset)
        region.store32(UInt32(truncatingIfNeeded: value >> 32), at: offset + 4)
    }
    var length: Int { region.length }
}

/// DMA memory the device can reach: process address, IOVA, length. One
/// VFIOKit mapping; unmapped on ``release()`` or when the last reference goes.
final class DMAMemory: @unchecked Sendable {
    // @unchecked: address and IOVA never change; the mapping is only touched
    // by release()/revoke(), which the owner calls once, with no I/O running.
    let base: UnsafeMutableRawPointer
    let iova: UInt64
    let length: Int
    private let buffer: DMABuffer
    private var mapping: DMAMapping?

    init(buffer: DMABuffer, mapping: consuming DMAMapping) {
        self.buffer = buffer
        iova = mapping.iova
        length = buffer.length
        // Safety: the buffer's address is stable for its lifetime, and this
        // object keeps the buffer alive.
        base = UnsafeMutableRawPointer(bitPattern: buffer.address)!
        self.mapping = consume mapping
    }

    /// Unmaps from the IOMMU; the memory stays (until this object goes), so a
    /// device still using the IOVA faults instead of reaching freed memory.
    func release() throws(NVMeError) {
        guard let m = mapping.take() else { return }
        do { try m.unmap() } catch { throw platformError(error, "unmap DMA memory at IOVA 0x\(String(iova, radix: 16))") }
    }
}

/// One MSI-X vector routed to an eventfd.
struct Interrupt: Sendable {
    let vector: Int
    let eventfd: EventFD

    /// Blocks until the vector fires or `timeout` passes (1 ms resolution);
    /// true when it fired. Allocation-free.
    @inline(__always) func wait(timeout: Duration) throws(NVMeError) -> Bool {
        do { return try eventfd.wait(timeout: timeout) != nil } catch {
            throw platformError(error, "wait for MSI-X vector \(vector)")
        }
    }
}

/// The controller's PCI function opened through VFIOKit.
final class PlatformDevice: @unchecked Sendable {
    // @unchecked: opened and closed by the controller under its own rules
    // (no I/O running during close); the fields below are set once.
    let address: String
    let mode: NVMeDMAMode
    /// The DMA space; nil once closed (mappings still alive keep it open until they go).
    private var space: DMASpace?
    private let device: VFIODevice
    /// BAR0; nil once closed (the mapping then goes, and with it the last
    /// reference to the device file, so vfio-pci can let the device go).
    private(set) var registers: Registers?
    private var msixVectors = 0
    private var eventfds: [EventFD] = []

    private init(address: String, mode: NVMeDMAMode, space: DMASpace, device: VFIODevice, registers: Registers) {
        self.address = address
        self.mode = mode
        self.space = space
        self.device = device
        self.registers = registers
    }

    /// Checks that `bdf` is an NVMe controller bound to vfio-pci, opens it in
    /// `mode` (nil: the best the kernel offers), maps BAR0 and turns on bus
    /// mastering. Nothing stays open when it throws.
    static func open(_ bdf: String, mode: NVMeDMAMode?) throws(NVMeError) -> PlatformDevice {
        let address: PCIAddress
        do { address = try PCIAddress(parsing: bdf) } catch {
            throw NVMeError(.invalidArgument, "'\(bdf)' is not a PCI address: expected \(PCIAddress.expectedForm)")
        }
        let name = address.description
        let pci: PCIDevice
        do { pci = try PCIHost().device(address) } catch {
            throw NVMeError(.noSuchDevice, "there is no PCI function \(name) on this machine", device: name,
                            hint: "`lspci -D -d ::0108` or `vfioctl list` lists the NVMe controllers there are")
        }
        guard pci.classCode == 0x01_08_02 else {
            throw NVMeError(.notNVMe,
                            "\(name) (\(pci.ids), \(pci.className), class 0x\(String(pci.classCode, radix: 16, uppercase: false).leftPadded(6))) "
                                + "is not an NVMe controller (class 0x010802)", device: name,
                            hint: "`vfioctl list` shows each device's class; pick one listed as \"NVMe controller\"")
        }
        guard pci.driver == "vfio-pci" else {
            let now = pci.driver.map { "is bound to the kernel's \($0) driver" } ?? "has no driver"
            throw NVMeError(.notBoundToVFIO, "\(name) \(now), not vfio-pci: userspace cannot reach it", device: name,
                            hint: "`vfioctl bind \(name)` hands it to vfio-pci"
                                + (pci.driver.map { "; `vfioctl unbind \(name) --restore` gives it back to \($0)" } ?? ""))
        }
        do throws(VFIOError) {
            let space: DMASpace
            if let mode { space = try DMASpace(mode: mode.vfio, dmaMask: .max) } else { space = try DMASpace() }
            let device = try space.openDevice(bdf: name)
            let bar = try device.map(region: try device.regionInfo(PCIRegion.bar(0)))
            guard bar.length >= 0x1008 else {
                throw VFIOError.invalid(.step("map BAR0"), "BAR0 is \(bar.length) bytes, too small for NVMe registers and doorbells")
            }
            try device.configSpace().setBusMaster(true)
            return PlatformDevice(address: name, mode: NVMeDMAMode(space.mode), space: space, device: device,
                                  registers: Registers(region: bar))
        } catch {
            throw platformError(error, "open \(name) through VFIO")
        }
    }

    /// `bytes` of zeroed DMA memory mapped at an IOVA the space's allocator picks.
    func allocate(_ bytes: Int) throws(NVMeError) -> DMAMemory {
        guard let space else { throw NVMeError(.closed, "the controller is closed", device: address) }
        do throws(VFIOError) {
            let buffer = try DMABuffer(length: bytes)
            return DMAMemory(buffer: buffer, mapping: try space.map(buffer))
        } catch {
            throw platformError(error, "allocate \(bytes) bytes of DMA memory")
        }
    }

    /// MSI-X vectors available on the device.
    func msixVectorCount() throws(NVMeError) -> Int {
        do { return Int(try device.irqInfo(.msix).count) } catch { throw platformError(error, "read MSI-X info") }
    }

    /// Routes MSI-X vectors 0..<count to new eventfds (enables MSI-X).
    func enableMSIX(count: Int) throws(NVMeError) -> [Interrupt] {
        do throws(VFIOError) {
            let fds = try (0..<count).map { _ throws(VFIOError) in try EventFD() }
            try device.setIRQTrigger(.msix, start: 0, eventfds: fds)
            msixVectors = count
            eventfds = fds
            return fds.enumerated().map { Interrupt(vector: $0.offset, eventfd: $0.element) }
        } catch {
            throw platformError(error, "enable \(count) MSI-X vectors")
        }
    }

    /// Turns MSI-X off (the eventfds are released by VFIOKit).
    func disableMSIX() throws(NVMeError) {
        guard msixVectors > 0 else { return }
        msixVectors = 0
        do { try device.disableIRQ(.msix) } catch { throw platformError(error, "disable MSI-X") }
    }

    /// Bus mastering off, BAR0 unmapped, the device fd closed. The DMA space
    /// goes when the last mapping does. Errors are reported after every step ran.
    func close() throws(NVMeError) {
        var first: NVMeError?
        do { try disableMSIX() } catch { first = first ?? error }
        if registers != nil {
            do { try device.configSpace().setBusMaster(false) } catch {
                first = first ?? platformError(error, "turn off bus mastering")
            }
        }
        registers = nil
        do { try device.close() } catch { first = first ?? platformError(error, "close the device") }
        for e in eventfds {
            do { try e.close() } catch { first = first ?? platformError(error, "close an MSI-X eventfd") }
        }
        eventfds = []
        space = nil
        if let first { throw first }
    }
}

/// A VFIOKit error as the driver's error, keeping its words and hint.
func platformError(_ e: VFIOError, _ what: String) -> NVMeError {
    NVMeError(.vfio, "\(what): \(e.summary)", hint: e.hint)
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
