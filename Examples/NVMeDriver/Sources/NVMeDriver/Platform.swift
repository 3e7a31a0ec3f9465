// Where the driver meets VFIOKit: the controller opened through VFIOKit's
// front door (`AttachedDevice`) with the driver's own checks, BAR0 with the
// NVMe 64-bit register convention, DMA memory held by reference, MSI-X waits
// and VFIOKit errors in the driver's error type, the barriers. The rest of
// the driver uses VFIOKit's vocabulary (IOVA, Interrupt) and these helpers.

import VFIOKit

/// The five ways Linux gives a device an IOMMU address space (VFIOKit's `DMAMode`).
public typealias NVMeDMAMode = DMAMode

/// `dma_wmb`: the driver's stores to DMA memory (an SQ entry, a PRP list)
/// before later stores. (An `MMIORegion` store has it built in, as `writel`;
/// the queues still call it before a doorbell to say what they rely on.)
@inline(__always) func writeBarrier() { DMABuffer.writeBarrier() }

/// `dma_rmb`: a completion's phase bit before the rest of the entry.
@inline(__always) func readBarrier() { DMABuffer.readBarrier() }

/// BAR0: the controller's registers and doorbells.
struct Registers: @unchecked Sendable {
    // @unchecked: device registers are shared mutable state by nature; the
    // driver orders its own accesses.
    let region: MMIORegion

    @inline(__always) func load32(_ offset: Int) -> UInt32 { region.load32(at: offset) }
    @inline(__always) func store32(_ value: UInt32, _ offset: Int) { region.store32(value, at: offset) }
    /// 64-bit registers as two 32-bit accesses, low half first (Linux's
    /// `lo_hi_readq`), which every controller accepts.
    @inline(__always) func load64(_ offset: Int) -> UInt64 {
        UInt64(region.load32(at: offset)) | UInt64(region.load32(at: offset + 4)) << 32
    }
    @inline(__always) func store64(_ value: UInt64, _ offset: Int) {
        region.store32(UInt32(truncatingIfNeeded: value), at: offset)
        region.store32(UInt32(truncatingIfNeeded: value >> 32), at: offset + 4)
    }
}

/// One VFIOKit DMA mapping held by reference (queues and buffers share it).
/// ``release()`` unmaps it; the memory stays until this object goes, so a
/// device still using the IOVA faults instead of reaching freed memory.
final class DMAMemory: @unchecked Sendable {
    // @unchecked: base, IOVA and length never change; the mapping is only
    // taken by release(), which the owner calls once, with no I/O running.
    let base: UnsafeMutableRawPointer
    let iova: IOVA
    let length: Int
    /// The controller (PCI address) the memory is mapped for, for errors.
    let device: String
    /// The memory: kept past ``release()`` (the mapping holds it only until it is unmapped).
    private let buffer: DMABuffer
    private var mapping: DMAMapping?

    init(_ mapping: consuming DMAMapping, device: String) {
        self.device = device
        buffer = mapping.buffer
        base = mapping.buffer.baseAddress
        iova = mapping.iova
        length = mapping.buffer.length
        self.mapping = consume mapping
    }

    func release() throws(NVMeError) {
        guard let m = mapping.take() else { return }
        do { try m.unmap() } catch { throw platformError(error, "unmap DMA memory at IOVA \(iova)", device: device) }
    }
}

extension AttachedDevice {
    /// The NVMe controller at `text`: checked (an NVMe class code, on
    /// vfio-pci: the driver's own words for a driver's mistakes), opened in
    /// `mode` (nil: the best), BAR0 mapped, bus mastering on.
    static func nvme(_ text: String, mode: NVMeDMAMode?) throws(NVMeError) -> (AttachedDevice, Registers) {
        let address: PCIAddress
        do { address = try PCIAddress(parsing: text) } catch {
            throw NVMeError(.invalidArgument, "'\(text)' is not a PCI address: expected \(PCIAddress.expectedForm)")
        }
        let name = address.description
        // The class code first: opening a device means binding it to an address space.
        guard let pci = try? PCIHost().device(address) else {
            throw NVMeError(.noSuchDevice, "there is no PCI function \(name) on this machine", device: name,
                            hint: "`lspci -D -d ::0108` or `vfioctl list` lists the NVMe controllers there are")
        }
        guard pci.classCode == 0x01_08_02 else {
            let code = String(pci.classCode, radix: 16)
            throw NVMeError(.notNVMe, "\(name) (\(pci.ids), \(pci.className), class 0x\(String(repeating: "0", count: max(0, 6 - code.count)) + code)) "
                                + "is not an NVMe controller (class 0x010802)", device: name,
                            hint: "`vfioctl list` shows each device's class; pick one listed as \"NVMe controller\"")
        }
        guard pci.isBoundToVFIO else {
            let now = pci.driver.map { "is bound to the kernel's \($0) driver" } ?? "has no driver"
            throw NVMeError(.notBoundToVFIO, "\(name) \(now), not vfio-pci: userspace cannot reach it", device: name,
                            hint: "`vfioctl bind \(name)` hands it to vfio-pci"
                                + (pci.driver.map { "; `vfioctl unbind \(name) --restore` gives it back to \($0)" } ?? ""))
        }
        let device: AttachedDevice
        do { device = try AttachedDevice.open(address, mode: mode) } catch { throw platformError(error, "open \(name) through VFIO") }
        do throws(NVMeError) {
            return (device, try device.nvmeRegisters())
        } catch {
            try? device.close()  // BAR0 unmapped, the device fd closed: nothing stays open
            throw error
        }
    }

    /// For a device the caller opened (``NVMeController/init(device:options:)``):
    /// open, and an NVMe controller by its class code (read through the VFIO
    /// config region, so no sysfs or driver state is needed).
    func checkOpenNVMe() throws(NVMeError) {
        let name = self.name.description
        guard !isClosed else {
            throw NVMeError(.closed, "the AttachedDevice for \(name) is closed", device: name,
                            hint: "open it again (AttachedDevice.open) or use NVMeController(address:)")
        }
        let classCode: UInt32
        do { classCode = try configSpace().read32(0x08) >> 8 } catch {
            throw platformError(error, "read the class code (config space offset 0x08)", device: name)
        }
        guard classCode == 0x01_08_02 else {
            let code = String(classCode, radix: 16)
            throw NVMeError(.notNVMe, "\(name) (class 0x\(String(repeating: "0", count: max(0, 6 - code.count)) + code)) is not an NVMe controller "
                                + "(class 0x010802)", device: name,
                            hint: "`vfioctl list` shows each device's class; pick one listed as \"NVMe controller\"")
        }
    }

    /// BAR0 mapped (registers and doorbells) and bus mastering on. When it
    /// throws, BAR0 is unmapped again and bus mastering is as it was.
    func nvmeRegisters() throws(NVMeError) -> Registers {
        var bar0: MMIORegion?
        do throws(VFIOError) {
            let b = try bar(0)
            bar0 = b
            guard b.length >= 0x1008 else {
                throw VFIOError.invalid(.step("map BAR0"), "BAR0 is \(b.length) bytes, too small for NVMe registers and doorbells")
            }
            try setBusMaster(true)
            return Registers(region: b)
        } catch {
            try? bar0?.unmap()
            throw platformError(error, "map BAR0 and turn on bus mastering", device: name.description)
        }
    }

    /// `bytes` of zeroed DMA memory at an IOVA the space's allocator picks.
    func dmaMemory(_ bytes: Int) throws(NVMeError) -> DMAMemory {
        do { return DMAMemory(try allocateDMA(bytes: bytes), device: name.description) } catch {
            throw platformError(error, "allocate \(bytes) bytes of DMA memory", device: name.description)
        }
    }

    /// MSI-X vectors `0..<count`, as a set that turns MSI-X off when released.
    func msix(count: Int) throws(NVMeError) -> InterruptSet {
        do { return try interrupts(.msix, count: count) } catch { throw platformError(error, "enable \(count) MSI-X vectors", device: name.description) }
    }
    func msixVectorCount() throws(NVMeError) -> Int {
        do { return try interruptCount(.msix) } catch { throw platformError(error, "read MSI-X info", device: name.description) }
    }

    /// Bus mastering off, then the device closed (`closing`), or only the
    /// driver's BAR0 mapping unmapped (a device the caller opened and keeps).
    /// Errors come after every step ran.
    func release(closing: Bool, registers: Registers) throws(NVMeError) {
        var first: NVMeError?
        do { try setBusMaster(false) } catch { first = platformError(error, "turn off bus mastering", device: name.description) }
        if closing {
            do { try close() } catch { first = first ?? platformError(error, "close the device", device: name.description) }
        } else {
            do { try registers.region.unmap() } catch { first = first ?? platformError(error, "unmap BAR0", device: name.description) }
        }
        if let first { throw first }
    }
}

extension Interrupt {
    /// Waits up to `timeout` for the vector; true when it fired. Allocation-free.
    @inline(__always) func fired(within timeout: Duration) throws(NVMeError) -> Bool {
        do { return try wait(timeout: timeout) != nil } catch {
            throw platformError(error, "wait for MSI-X vector \(vector)")
        }
    }
}

/// A VFIOKit error as the driver's error, keeping its words and hint.
func platformError(_ e: VFIOError, _ what: String, device: String? = nil) -> NVMeError {
    NVMeError(.vfio, "\(what): \(e.summary)", device: device, hint: e.hint)
}
