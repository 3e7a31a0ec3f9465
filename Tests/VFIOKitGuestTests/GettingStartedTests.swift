import Testing
import VFIOKit
import VFIOKitTestSupport

/// The getting-started article's driver (Sources/VFIOKit/VFIOKit.docc/GettingStarted.md),
/// run on the guest's lone edu. The region between the markers is the article's
/// code block, character for character after removing the common indentation:
/// `DocumentationTests/gettingStartedCodeIsTheGuestTest` (a host test) compares them.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("GettingStartedTests"))
struct GettingStartedTests {
    @Test(.timeLimit(.minutes(1))) func theArticlesDriverMovesBytesThroughTheIOMMU() throws {
        let address = try Guest.requireEdu()
        try Guest.bindToVFIO(address)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(address) } }
        let fdsBefore = Guest.openFDCount()
        let message = DMAModesTests.pattern  // 4000 bytes
        let received = try eduRoundTrip(address: address, message: message)
        #expect(firstDifference(received, message) == nil, "the bytes that came back differ")
        #expect(Guest.openFDCount() == fdsBefore, "the driver's teardown must close every fd")
    }
}

// getting-started: begin
/// Copies `message` (at most 4095 bytes) into QEMU's edu device and back by
/// DMA, each transfer ending in an interrupt, and returns what came back.
func eduRoundTrip(address: String, message: [UInt8]) throws(VFIOError) -> [UInt8] {
    // 1. The device, opened, bound and attached to an IOMMU address space of its
    //    own, in the best mode this kernel offers, for 28 address bits.
    let edu = try AttachedDevice.open(try PCIAddress(parsing: address), dmaMask: (1 << 28) - 1)

    // 2. BAR0, the edu's registers, mapped for loads and stores.
    let bar0 = try edu.bar(0)

    // 3. DMA memory, and the IOVA the device reaches it at.
    let mapping = try edu.allocateDMA(bytes: 8192)

    // 4. MSI vector 0 signals an eventfd; then the device may master the bus.
    let msi = try edu.interrupt(.msi)
    try edu.setBusMaster(true)

    // 5. One transfer: addresses and length first, the command (the doorbell) last.
    func transfer(from source: UInt64, to destination: UInt64, toMemory: Bool) throws(VFIOError) {
        bar0.store64(source, at: 0x80)
        bar0.store64(destination, at: 0x88)
        bar0.store64(UInt64(message.count), at: 0x90)
        bar0.store64(0x01 | (toMemory ? 0x02 : 0) | 0x04, at: 0x98)  // run, direction, interrupt when done
        // 6. Wait for the interrupt, then acknowledge it in the device.
        guard try msi.wait(timeout: .seconds(10)) != nil else {
            throw VFIOError.invalid(.step("edu DMA"), "no interrupt within 10 s", object: address)
        }
        bar0.store32(0x100, at: 0x64)
    }
    mapping.buffer.write(message, at: 0)
    try transfer(from: mapping.iova.rawValue, to: 0x40000, toMemory: false)
    try transfer(from: 0x40000, to: (mapping.iova + 4096).rawValue, toMemory: true)
    let received = mapping.buffer.read(at: 4096, count: message.count)

    // 7. Teardown: stop the device, then unmap, then close.
    try msi.close()
    try edu.setBusMaster(false)
    try mapping.unmap()
    try edu.close()
    return received
}
// getting-started: end
