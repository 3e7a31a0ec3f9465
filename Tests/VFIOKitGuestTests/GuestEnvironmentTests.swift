import Foundation
import Testing
@_spi(Testing) import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The guest the other guest suites rely on, checked in the guest: the IOMMU
/// vm.sh was asked for is the one the kernel runs, iommufd and the VFIO nodes,
/// the mock IOMMU and fail-nth, the fixed edu/nvme devices at the BDFs the
/// harness exported, huge pages and the nested QEMU. The suite's only gate is
/// "in the guest" (VFIOKIT_GUEST=1); everything it checks is a requirement.
@Suite(.exclusiveGuestDevices, .guestOnly("GuestEnvironmentTests"))
struct GuestEnvironmentTests {
    @Test func theKernelRunsTheIOMMUTheHarnessAskedFor() throws {
        let kind = try Guest.requireIOMMU()
        // Each IOMMU driver registers its units in /sys/class/iommu: VT-d as dmarN, AMD-Vi as
        // ivhdN, virtio-iommu under its PCI function's name; IOMMUFD_TEST adds its mock IOMMU
        // (iommufd_selftest...).
        let units = try FileManager.default.contentsOfDirectory(atPath: "/sys/class/iommu")
        let real = units.filter { !$0.hasPrefix("iommufd_selftest") }
        #expect(real.count + 1 == units.count, "the selftest's mock IOMMU is registered: \(units)")
        switch kind {
        case .intel: #expect(real.count == 1 && real[0].hasPrefix("dmar"), "\(units)")
        case .amd: #expect(real == ["ivhd0"], "\(units)")
        case .virtio: #expect(real == ["0000:00:02.0"], "\(units)")
        }
    }

    @Test func iommufdAndVFIONodesExist() {
        #expect(FileManager.default.fileExists(atPath: "/dev/iommu"))
        #expect(FileManager.default.fileExists(atPath: "/dev/vfio/vfio"))
    }

    @Test func mockIOMMUAndFailNthAreThere() throws {
        try MockIOMMU.requireAvailable()
        try FailNth.requireAvailable()
    }

    @Test(arguments: ["VFIOKIT_EDU", "VFIOKIT_EDU_PAIR_A", "VFIOKIT_EDU_PAIR_B"])
    func eduDevicesAreWhereTheHarnessSaidWithoutADriver(_ role: String) throws {
        let bdf = try Guest.require(role)
        let dir = "/sys/bus/pci/devices/\(bdf)"
        let vendor = try String(contentsOfFile: dir + "/vendor", encoding: .utf8)
        let device = try String(contentsOfFile: dir + "/device", encoding: .utf8)
        #expect(vendor.trimmingCharacters(in: .whitespacesAndNewlines) == "0x1234")
        #expect(device.trimmingCharacters(in: .whitespacesAndNewlines) == "0x11e8")
        #expect(Guest.driver(of: bdf) == nil, "every guest test leaves the edus without a driver")
    }

    @Test func nvmeIsOnItsDriverWithABlockDevice() throws {
        let nvme = try Guest.require("VFIOKIT_NVME")
        #expect(Guest.driver(of: nvme) == "nvme")
        let block = try Guest.require("VFIOKIT_NVME_BLOCK")
        #expect(FileManager.default.fileExists(atPath: block))
    }

    /// Behind the pcie-pci-bridge the pair and the bridge form one group of
    /// three; under virtio-iommu (which cannot handle the bridge alias) the
    /// harness makes the pair one multifunction slot: a group of two.
    @Test func pairSharesOneGroup() throws {
        let a = try Guest.require("VFIOKIT_EDU_PAIR_A"), b = try Guest.require("VFIOKIT_EDU_PAIR_B")
        let lone = try Guest.requireEdu()
        let group = { (bdf: String) throws -> String in try #require(Guest.iommuGroup(of: bdf), "\(bdf) has no IOMMU group") }
        #expect(try group(a) == group(b))
        #expect(try group(lone) != group(a))
        let members = try FileManager.default.contentsOfDirectory(atPath: "/sys/kernel/iommu_groups/\(group(a))/devices")
        if let bridge = try Guest.requireBridgeAsExpected() {
            #expect(Set(members) == [a, b, bridge])
        } else {
            #expect(Set(members) == [a, b])
        }
    }

    @Test func hugePagesAndTheNestedQEMUAreThere() throws {
        let free = try String(contentsOfFile: "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", encoding: .utf8)
        #expect((Int(free.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 4, "free 2 MiB pages: \(free)")
        #expect(access("/usr/bin/qemu-system-x86_64", X_OK) == 0, "AttachGuestTests runs the host's QEMU in the guest")
    }
}
