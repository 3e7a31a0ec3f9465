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
    /// The memory: kept past ``release()`` (the mapping holds it only until it is unmapped).
    private let buffer: DMABuffer
    private var mapping: DMAMapping?

    init(_ mapping: consuming DMAMapping) {
        buffer = mapping.buffer
        base = mapping.buffer.baseAddress
        iova = mapping.iova
        length = mapping.buffer.length
        self.mapping = consume mapping
    }

    func release() throws(NVMeError) {
        guard let m = mapping.take() else { return }
        do { try m.unmap() } catch { throw platformError(error, "unmap DMA memory at IOVA \(iova)") }
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
        do throws(VFIOError) {
            let bar0 = try device.bar(0)
            guard bar0.length >= 0x1008 else {
                throw VFIOError.invalid(.step("map BAR0"), "BAR0 is \(bar0.length) bytes, too small for NVMe registers and doorbells")
            }
            try device.setBusMaster(true)
            return (device, Registers(region: bar0))
        } catch {
            try? device.close()  // BAR0 unmapped, the device fd closed: nothing stays open
            throw platformError(error, "open \(name) through VFIO")
        }
    }

    /// `bytes` of zeroed DMA memory at an IOVA the space's allocator picks.
    func dmaMemory(_ bytes: Int) throws(NVMeError) -> DMAMemory {
        do { return DMAMemory(try allocateDMA(bytes: bytes)) } catch {
            throw platformError(error, "allocate \(bytes) bytes of DMA memory")
        }
    }

    /// MSI-X vectors `0..<count`, as a set that turns MSI-X off when released.
    func msix(count: Int) throws(NVMeError) -> InterruptSet {
        do { return try interrupts(.msix, count: count) } catch { throw platformError(error, "enable \(count) MSI-X vectors") }
    }
    func msixVectorCount() throws(NVMeError) -> Int {
        do { return try interruptCount(.msix) } catch { throw platformError(error, "read MSI-X info") }
    }

    /// Bus mastering off, then the device closed. Errors come after both ran.
    func release() throws(NVMeError) {
        var first: NVMeError?
        do { try setBusMaster(false) } catch { first = platformError(error, "turn off bus mastering") }
        do { try close() } catch { first = first ?? platformError(error, "close the device") }
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
func platformError(_ e: VFIOError, _ what: String) -> NVMeError {
    NVMeError(.vfio, "\(what): \(e.summary)", hint: e.hint)
}
