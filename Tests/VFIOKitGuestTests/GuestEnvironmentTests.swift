import Foundation
import Testing

/// The guest the other guest suites rely on: an IOMMU, iommufd, the VFIO
/// nodes, and the fixed edu/nvme devices at the BDFs the harness exported.
@Suite(.enabled(if: GuestEnvironment.inGuest, "runs in the QEMU test guest: Scripts/vm.sh -- .build/debug/VFIOKitPackageTests.xctest --testing-library swift-testing --filter GuestEnvironment"))
struct GuestEnvironmentTests {
    @Test func iommufdAndVFIONodesExist() {
        #expect(FileManager.default.fileExists(atPath: "/dev/iommu"))
        #expect(FileManager.default.fileExists(atPath: "/dev/vfio/vfio"))
    }

    @Test(arguments: ["VFIOKIT_EDU", "VFIOKIT_EDU_PAIR_A", "VFIOKIT_EDU_PAIR_B"])
    func eduDevicesAreWhereTheHarnessSaid(_ role: String) throws {
        let bdf = try #require(ProcessInfo.processInfo.environment[role])
        let dir = "/sys/bus/pci/devices/\(bdf)"
        let vendor = try String(contentsOfFile: dir + "/vendor", encoding: .utf8)
        let device = try String(contentsOfFile: dir + "/device", encoding: .utf8)
        #expect(vendor.trimmingCharacters(in: .whitespacesAndNewlines) == "0x1234")
        #expect(device.trimmingCharacters(in: .whitespacesAndNewlines) == "0x11e8")
    }

    /// Behind the pcie-pci-bridge the pair and the bridge form one group of
    /// three; under virtio-iommu (which cannot handle the bridge alias) the
    /// harness makes the pair one multifunction slot: a group of two.
    @Test func pairSharesOneGroup() throws {
        let env = ProcessInfo.processInfo.environment
        let a = try #require(env["VFIOKIT_EDU_PAIR_A"]), b = try #require(env["VFIOKIT_EDU_PAIR_B"])
        let lone = try #require(env["VFIOKIT_EDU"])
        func group(_ bdf: String) throws -> String {
            try FileManager.default.destinationOfSymbolicLink(atPath: "/sys/bus/pci/devices/\(bdf)/iommu_group")
                .split(separator: "/").last.map(String.init) ?? ""
        }
        #expect(try group(a) == group(b))
        #expect(try group(lone) != group(a))
        let members = try FileManager.default.contentsOfDirectory(atPath: "/sys/kernel/iommu_groups/\(group(a))/devices")
        let bridge = env["VFIOKIT_BRIDGE"] ?? ""
        #expect(members.count == (bridge.isEmpty ? 2 : 3))
        if !bridge.isEmpty { #expect(members.contains(bridge)) }
    }
}

enum GuestEnvironment {
    static var inGuest: Bool {
        ProcessInfo.processInfo.environment["VFIOKIT_GUEST"] == "1" && FileManager.default.fileExists(atPath: "/dev/iommu")
    }
}
