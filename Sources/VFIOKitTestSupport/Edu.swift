import VFIOKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// QEMU's edu device (1234:11e8) driven through VFIO: BAR0 registers,
/// factorial, and its DMA engine, which reads and writes memory at IOVAs
/// through the IOMMU. Register map: docs/test-machine.md.
public final class EduDevice: Sendable {
    public let device: VFIODevice
    public let bar0: MMIORegion
    public let config: PCIConfigSpace

    public static let identification: UInt32 = 0x0100_00ed
    /// The device-side DMA buffer.
    public static let bufferAddress: UInt64 = 0x40000
    /// The most bytes one transfer may move (QEMU 7.2 rejects a transfer that ends at 0x41000).
    public static let maxTransfer = 4095
    /// IOVAs the device can reach (28-bit DMA mask).
    public static let dmaMask: UInt64 = (1 << 28) - 1

    enum Reg {
        static let id = 0x00, liveness = 0x04, factorial = 0x08, status = 0x20
        static let irqStatus = 0x24, irqRaise = 0x60, irqAck = 0x64
        static let dmaSource = 0x80, dmaDestination = 0x88, dmaCount = 0x90, dmaCommand = 0x98
    }

    /// Wraps an opened VFIO device; maps BAR0 and checks the identification register.
    public init(_ device: VFIODevice) throws(VFIOError) {
        self.device = device
        bar0 = try device.map(region: try device.regionInfo(PCIRegion.bar(0)))
        config = try device.configSpace()
        let id = bar0.load32(at: Reg.id)
        guard id == EduDevice.identification else {
            throw VFIOError.invalid(.step("edu"), "identification register reads 0x\(String(id, radix: 16)), expected 0x10000ed",
                                    object: device.label)
        }
    }

    public var id: UInt32 { bar0.load32(at: Reg.id) }

    /// Writes `value` to the liveness register and returns what it reads back (the inverse).
    public func liveness(_ value: UInt32) -> UInt32 {
        bar0.store32(value, at: Reg.liveness)
        return bar0.load32(at: Reg.liveness)
    }

    /// Computes n! on the device (32-bit result), polling for completion.
    public func factorial(_ n: UInt32, timeoutSeconds: Double = 10) throws(VFIOError) -> UInt32 {
        bar0.store32(n, at: Reg.factorial)
        try poll("factorial", timeoutSeconds) { self.bar0.load32(at: Reg.status) & 0x01 == 0 }
        return bar0.load32(at: Reg.factorial)
    }

    /// Routes the device's one MSI vector to a new eventfd (the device keeps
    /// it alive until MSI is disabled).
    public func enableMSI() throws(VFIOError) -> EventFD {
        try device.enableIRQ(.msi)
    }

    /// Turns off MSI.
    public func disableMSI() throws(VFIOError) { try device.disableIRQ(.msi) }

    /// Turns on bus mastering (the device may DMA).
    public func enableBusMaster() throws(VFIOError) { try config.setBusMaster(true) }

    /// Copies `count` bytes from memory at `iova` into the device buffer at `deviceOffset`.
    public func dmaToDevice(from iova: UInt64, count: Int, deviceOffset: Int = 0, interrupt: Bool = false,
                            wait: Bool = true) throws(VFIOError) {
        try start(source: iova, destination: EduDevice.bufferAddress + UInt64(deviceOffset), count: count,
                  command: 0x01 | (interrupt ? 0x04 : 0), deviceOffset: deviceOffset)
        if wait { try waitForDMA() }
    }

    /// Copies `count` bytes from the device buffer at `deviceOffset` to memory at `iova`.
    public func dmaFromDevice(to iova: UInt64, count: Int, deviceOffset: Int = 0, interrupt: Bool = false,
                              wait: Bool = true) throws(VFIOError) {
        try start(source: EduDevice.bufferAddress + UInt64(deviceOffset), destination: iova, count: count,
                  command: 0x01 | 0x02 | (interrupt ? 0x04 : 0), deviceOffset: deviceOffset)
        if wait { try waitForDMA() }
    }

    private func start(source: UInt64, destination: UInt64, count: Int, command: UInt64, deviceOffset: Int) throws(VFIOError) {
        guard count > 0, deviceOffset >= 0, deviceOffset + count <= EduDevice.maxTransfer else {
            throw VFIOError.invalid(.step("edu DMA"), "\(count) bytes at device offset \(deviceOffset): edu transfers must stay within 4095 bytes of 0x40000")
        }
        bar0.store64(source, at: Reg.dmaSource)
        bar0.store64(destination, at: Reg.dmaDestination)
        bar0.store64(UInt64(count), at: Reg.dmaCount)
        bar0.store64(command, at: Reg.dmaCommand)
    }

    /// Whether a transfer is running.
    public var dmaBusy: Bool { bar0.load64(at: Reg.dmaCommand) & 0x01 != 0 }

    /// Polls the DMA command register until the transfer is done.
    public func waitForDMA(timeoutSeconds: Double = 10) throws(VFIOError) {
        try poll("edu DMA", timeoutSeconds) { !self.dmaBusy }
    }

    /// Interrupt status bits (0x1 factorial, 0x100 DMA, or what was raised).
    public var interruptStatus: UInt32 { bar0.load32(at: Reg.irqStatus) }
    /// Acknowledges interrupt status bits.
    public func acknowledge(_ bits: UInt32) { bar0.store32(bits, at: Reg.irqAck) }
    /// Raises interrupt status bits (the device then signals its interrupt).
    public func raise(_ bits: UInt32) { bar0.store32(bits, at: Reg.irqRaise) }

    private func poll(_ what: String, _ timeout: Double, _ done: () -> Bool) throws(VFIOError) {
        let deadline = EduDevice.now() + timeout
        while !done() {
            if EduDevice.now() > deadline {
                throw VFIOError.invalid(.step(VFIOError.Step(rawValue: what)), "the device did not finish within \(timeout) s", object: device.label)
            }
            usleep(50)
        }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// For DMA tests: where two byte arrays first differ, as short text (nil when
/// equal), so a failed expectation does not print 4000-byte arrays.
public func firstDifference(_ got: [UInt8], _ expected: [UInt8]) -> String? {
    if got == expected { return nil }
    if got.count != expected.count { return "length \(got.count), expected \(expected.count)" }
    let i = got.indices.first { got[$0] != expected[$0] }!
    let differing = zip(got, expected).filter { $0 != $1 }.count
    return "byte \(i): got 0x\(String(got[i], radix: 16)), expected 0x\(String(expected[i], radix: 16)); "
        + "\(differing) of \(got.count) bytes differ; got starts \(got.prefix(8).map { String($0, radix: 16) })"
}
