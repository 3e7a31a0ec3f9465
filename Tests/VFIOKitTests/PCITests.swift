import Foundation
import Testing
import VFIOCommands
import VFIOKit
@testable import VFIOHost

@Suite struct PCIAddressTests {
    @Test func parsesFullAndShortForms() throws {
        let a = try PCIAddress(parsing: "0000:00:03.0")
        #expect(a == PCIAddress(domain: 0, bus: 0, device: 3, function: 0))
        #expect(try PCIAddress(parsing: "01:1f.7") == PCIAddress(bus: 1, device: 0x1f, function: 7))
        #expect(try PCIAddress(parsing: "10000:AB:02.1").description == "10000:ab:02.1")
        #expect(try PCIAddress(parsing: " 00:03.0\n").description == "0000:00:03.0")
        #expect(a.description == "0000:00:03.0")
    }

    @Test(arguments: ["", "00:03", "0000:00:03", "00.03.0", "0000:00:20.0", "0000:00:03.8", "0000:100:03.0",
                      "zz:00.0", "0000:00:03.0.1", "a:b:c:d.0", "0000:00:-1.0"])
    func rejectsOtherFormsShowingTheExpectedOne(_ text: String) {
        do {
            _ = try PCIAddress(parsing: text)
            Issue.record("\(text) parsed")
        } catch {
            #expect(error.operation == .step(.parsePCIAddress))
            #expect(CLIWording.text(error.remedies)?.contains("DDDD:BB:DD.F") == true)
            #expect(error.description.contains("is not a PCI address"))
        }
    }

    @Test func ordersByDomainBusDeviceFunction() throws {
        let xs = try ["0000:01:00.0", "0000:00:1f.3", "0000:00:03.0", "0001:00:00.0"].map { try PCIAddress(parsing: $0) }
        #expect(xs.sorted().map(\.description) == ["0000:00:03.0", "0000:00:1f.3", "0000:01:00.0", "0001:00:00.0"])
    }
}

/// The guest's topology as a fixture: a lone edu, an edu pair behind a bridge in
/// one group, an nvme controller, and VGA without a group.
func guestLikeFixture() throws -> PCIFixture {
    let f = try PCIFixture()
    try f.addDevice("0000:00:02.0", vendor: 0x1234, device: 0x11e8, cls: 0x00ff00, group: 3, numa: 0)
    try f.addDevice("0000:00:04.0", vendor: 0x1b36, device: 0x000e, cls: 0x060400, group: 4, header: 1)
    try f.addDevice("0000:01:01.0", vendor: 0x1234, device: 0x11e8, cls: 0x00ff00, group: 4)
    try f.addDevice("0000:01:02.0", vendor: 0x1234, device: 0x11e8, cls: 0x00ff00, group: 4)
    try f.addDevice("0000:00:05.0", vendor: 0x1b36, device: 0x0010, cls: 0x010802, driver: "nvme", group: 5)
    try f.addDevice("0000:00:06.0", vendor: 0x1234, device: 0x1111, cls: 0x030000)
    try f.addNamespace("0000:00:05.0")
    f.kernel.setDefaultDriver("0000:00:05.0", "nvme")
    try f.link("/sys/class/iommu/dmar0", to: "../../devices/virtual/iommu/dmar0")
    try f.write("/sys/devices/virtual/iommu/dmar0/intel-iommu/ecap", "f00f5e\n")
    return f
}

@Suite struct PCIDiscoveryTests {
    @Test func readsDevicesFromSysfs() throws {
        let f = try guestLikeFixture()
        let devs = f.host.devices()
        #expect(devs.map(\.address.description) == ["0000:00:02.0", "0000:00:04.0", "0000:00:05.0", "0000:00:06.0",
                                                    "0000:01:01.0", "0000:01:02.0"])
        let edu = try f.host.device(try PCIAddress(parsing: "00:02.0"))
        #expect(edu.vendorID == 0x1234 && edu.deviceID == 0x11e8 && edu.ids == "1234:11e8")
        #expect(edu.subsystemVendorID == 0x1af4 && edu.subsystemDeviceID == 0x1100)
        #expect(edu.classCode == 0x00ff00 && edu.className == "Unclassified device")
        #expect(edu.driver == nil && edu.driverOverride == nil && edu.iommuGroup == 3 && edu.numaNode == 0)
        #expect(!edu.isBridge && edu.headerType == 0)
        let nvme = try f.host.device(try PCIAddress(parsing: "0000:00:05.0"))
        #expect(nvme.driver == "nvme" && nvme.className == "NVMe controller" && nvme.numaNode == nil)
        let bridge = try f.host.device(try PCIAddress(parsing: "0000:00:04.0"))
        #expect(bridge.isBridge && bridge.className == "PCI bridge" && bridge.headerType == 1)
        let vga = try f.host.device(try PCIAddress(parsing: "0000:00:06.0"))
        #expect(vga.iommuGroup == nil && vga.className == "VGA compatible controller")
    }

    @Test func missingDeviceIsAClearError() throws {
        let f = try guestLikeFixture()
        #expect(throws: VFIOError.self) { _ = try f.host.device(try PCIAddress(parsing: "0000:00:1f.0")) }
        do throws(VFIOError) { _ = try f.host.device(try PCIAddress(parsing: "0000:00:1f.0")) } catch {
            #expect(error.description.contains("no PCI device 0000:00:1f.0"))
            #expect(CLIWording.text(error.remedies)?.contains("vfioctl list") == true)
        }
    }

    @Test func groupsListMembers() throws {
        let f = try guestLikeFixture()
        let gs = f.host.groups()
        #expect(gs.map(\.id) == [3, 4, 5])
        #expect(gs[1].members.map(\.description) == ["0000:00:04.0", "0000:01:01.0", "0000:01:02.0"])
        #expect(gs[1].type == "DMA")
        #expect(throws: VFIOError.self) { _ = try f.host.group(of: PCIAddress(parsing: "0000:00:06.0")) }
    }

    @Test func classNamesFallBackFromInterfaceToClass() {
        #expect(PCIClassNames.name(for: 0x010802) == "NVMe controller")
        #expect(PCIClassNames.name(for: 0x010803) == "Non-volatile memory controller")
        #expect(PCIClassNames.name(for: 0x01ee00) == "Mass storage controller")
        #expect(PCIClassNames.name(for: 0x770000) == "class 0x770000")
    }

    @Test func cdevAndOverrideAreRead() throws {
        let f = try guestLikeFixture()
        try f.addDevice("0000:00:07.0", vendor: 0x1234, device: 0x11e8, cls: 0xff00, driver: "vfio-pci", group: 7, override: "vfio-pci")
        let d = try f.host.device(try PCIAddress(parsing: "0000:00:07.0"))
        #expect(d.vfioCdev == "vfio0" && d.vfioCdevPath == "/dev/vfio/devices/vfio0" && d.driverOverride == "vfio-pci")
        #expect(d.isBoundToVFIO && f.host.readiness(of: d) == .ready)
    }
}

@Suite struct PCIIOMMUTests {
    @Test func intelIOMMUReportsIRCapability() throws {
        let f = try guestLikeFixture()
        let i = f.host.iommus()
        #expect(i.count == 1 && i[0].kind == .intelVTd && i[0].supportsInterruptRemapping == true)
    }

    @Test func remappedIrqchipsMeanEnabled() throws {
        let f = try guestLikeFixture()
        try f.write("/proc/interrupts", """
                       CPU0       CPU1
              0:         44          0  IR-IO-APIC    2-edge      timer
             24:          0          0  IR-PCI-MSIX-0000:00:05.0    0-edge      nvme0q0
            """)
        #expect(f.host.interruptRemapping().state == .enabled)
        #expect(f.host.interruptRemapping().evidence.contains("IR-IO-APIC"))
    }

    @Test func plainIrqchipsMeanDisabled() throws {
        let f = try guestLikeFixture()
        try f.write("/proc/interrupts", "  0:   44  IO-APIC   2-edge  timer\n 24: 0 PCI-MSIX-0000:00:05.0 0-edge nvme0q0\n")
        #expect(f.host.interruptRemapping().state == .disabled)
    }

    @Test func virtioIOMMUNeverRemaps() throws {
        let f = try PCIFixture()
        try f.link("/sys/class/iommu/virtio0", to: "../../devices/pci0000:00/0000:00:01.0/virtio0/iommu/virtio0")
        try f.write("/proc/interrupts", "  CPU0\n")
        #expect(f.host.iommus().first?.kind == .virtio)
        let ir = f.host.interruptRemapping()
        #expect(ir.state == .disabled && ir.evidence.contains("virtio-iommu"))
    }
}

@Suite struct PCIViabilityTests {
    @Test func unboundMembersAndBridgesAreFine() throws {
        let f = try guestLikeFixture()
        let v = try f.host.viability(ofGroup: 4)
        #expect(v.viable && v.blocking.isEmpty)
        #expect(v.members.map(\.status) == [.unbound, .unbound, .unbound])
    }

    @Test func aKernelDriverBlocksAndIsNamed() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:02.0", "e1000e")
        try f.bindLink("0000:00:04.0", "pcieport")
        let v = try f.host.viability(of: PCIAddress(parsing: "0000:01:01.0"))
        #expect(!v.viable)
        #expect(v.blocking.map(\.description) == ["0000:01:02.0"])
        #expect(v.members.first { $0.address.description == "0000:00:04.0" }?.status == .managedDMA)
        #expect(v.summary.contains("0000:01:02.0 (bound to e1000e)"))
        #expect(CLIWording.text(v.remedies)?.contains("--group") == true)
    }

    @Test func stubAndVFIOAreFine() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:01.0", "vfio-pci")
        try f.bindLink("0000:01:02.0", "pci-stub")
        let v = try f.host.viability(ofGroup: 4)
        #expect(v.viable && v.members.map(\.status) == [.unbound, .vfio, .stub])
    }

    @Test func deviceWithoutGroupIsAClearError() throws {
        let f = try guestLikeFixture()
        do {
            _ = try f.host.viability(of: PCIAddress(parsing: "0000:00:06.0"))
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("is in no IOMMU group"))
        }
    }
}

@Suite struct PCIUsageTests {
    @Test func mountedNamespaceIsAUse() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        #expect(f.host.uses(of: a).isEmpty)
        try f.mount("259:0", at: "/tmp/mnt\\040point")
        let u = f.host.uses(of: a)
        #expect(u.count == 1 && u[0].kind == .mounted && u[0].object == "nvme0n1")
        #expect(u[0].detail.contains("/tmp/mnt point"))
    }

    @Test func upInterfaceIsAUseAndDownIsNot() throws {
        let f = try guestLikeFixture()
        try f.addDevice("0000:00:08.0", vendor: 0x8086, device: 0x10d3, cls: 0x020000, driver: "e1000e", group: 8)
        try f.addNetInterface("0000:00:08.0", name: "eth0", up: true)
        try f.addNetInterface("0000:00:08.0", name: "eth1", up: false)
        let u = f.host.uses(of: try PCIAddress(parsing: "0000:00:08.0"))
        #expect(u.map(\.object) == ["eth0"] && u[0].kind == .networkUp)
    }

    @Test func holdersAndSwapAreUses() throws {
        let f = try guestLikeFixture()
        try f.write("/sys/bus/pci/devices/0000:00:05.0/nvme/nvme0/nvme0n1/holders/dm-0", "")
        try f.write("/proc/swaps", "Filename Type Size Used Priority\n/dev/nvme0n1 partition 1024 0 -2\n")
        let kinds = f.host.uses(of: try PCIAddress(parsing: "0000:00:05.0")).map(\.kind)
        #expect(kinds.contains(.holder) && kinds.contains(.swap))
    }
}

@Suite struct PCIBindingTests {
    @Test func bindAndRestoreRoundTrip() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        let out = try f.host.bind(a)
        #expect(out.count == 1 && out[0].previousDriver == "nvme" && out[0].driver == "vfio-pci" && out[0].changed)
        #expect(out[0].vfioCdev != nil)
        #expect(f.driver("0000:00:05.0") == "vfio-pci" && f.override("0000:00:05.0") == "vfio-pci")
        let rec = try #require(f.host.bindingRecord(a))
        #expect(rec.originalDriver == "nvme" && rec.originalDriverOverride == nil && rec.boundTo == "vfio-pci")
        // Never new_id.
        #expect(!f.kernel.log.contains { $0.contains("new_id") })

        let back = try f.host.unbind(a, restore: true)
        #expect(back.driver == "nvme" && back.previousDriver == "vfio-pci")
        #expect(f.driver("0000:00:05.0") == "nvme" && f.override("0000:00:05.0") == nil)
        #expect(f.host.bindingRecord(a) == nil)
    }

    @Test func failedProbePutsTheDeviceBack() throws {
        let f = try guestLikeFixture()
        f.kernel.failProbe("vfio-pci")
        let a = try PCIAddress(parsing: "0000:00:05.0")
        let error = try #require(f.refusedBind(a))
        #expect(error.description.contains("did not bind to vfio-pci"))
        #expect(error.description.contains("put back to nvme (checked)"))
        #expect(f.driver("0000:00:05.0") == "nvme")
        #expect(f.override("0000:00:05.0") == nil)
        #expect(f.host.bindingRecord(a) == nil)
    }

    @Test func failedWriteMidwayPutsTheDeviceBack() throws {
        let f = try guestLikeFixture()
        f.kernel.failWrite("/sys/bus/pci/drivers_probe")
        let a = try PCIAddress(parsing: "0000:00:05.0")
        #expect(throws: VFIOError.self) { _ = try f.host.bind(a) }
        // drivers_probe fails, so restore rebinds through the driver's own bind file.
        #expect(f.driver("0000:00:05.0") == "nvme")
        #expect(f.override("0000:00:05.0") == nil)
        #expect(f.host.bindingRecord(a) == nil)
    }

    @Test func mountedNamespaceIsRefusedAndNothingChanges() throws {
        let f = try guestLikeFixture()
        try f.mount("259:0", at: "/tmp/data")
        let a = try PCIAddress(parsing: "0000:00:05.0")
        let error = try #require(f.refusedBind(a))
        #expect(error.description.contains("nvme0n1 is mounted on /tmp/data"))
        #expect(CLIWording.text(error.remedies)?.contains("--force") == true)
        #expect(f.kernel.log.isEmpty)
        #expect(f.driver("0000:00:05.0") == "nvme" && f.host.bindingRecord(a) == nil)
        // --force takes it anyway.
        _ = try f.host.bind(a, force: true)
        #expect(f.driver("0000:00:05.0") == "vfio-pci")
    }

    @Test func groupMemberOnAKernelDriverBlocksSingleBind() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:02.0", "e1000e")
        let a = try PCIAddress(parsing: "0000:01:01.0")
        let error = try #require(f.refusedBind(a))
        #expect(error.description.contains("not viable"))
        #expect(error.description.contains("0000:01:02.0 (bound to e1000e)"))
        #expect(CLIWording.text(error.remedies)?.contains("--group") == true)
        #expect(f.kernel.log.isEmpty && f.driver("0000:01:01.0") == nil)
        let out = try f.host.bind(a, group: true)
        #expect(Set(out.map(\.address.description)) == ["0000:01:01.0", "0000:01:02.0"])
        #expect(f.driver("0000:01:01.0") == "vfio-pci" && f.driver("0000:01:02.0") == "vfio-pci")
        #expect(f.driver("0000:00:04.0") == nil)  // the bridge is left alone
        #expect(try f.host.viability(ofGroup: 4).viable)
    }

    @Test func singleBindInASharedGroupNamesTheOtherMembers() throws {
        let f = try guestLikeFixture()
        let out = try f.host.bind(PCIAddress(parsing: "0000:01:01.0"))
        let note = out[0].notes.map { $0.worded() }.joined(separator: " ")
        #expect(note.contains("0000:01:02.0") && note.contains("0000:00:04.0") && note.contains("viable"))
    }

    @Test func groupBindFailureRestoresEveryMember() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:01.0", "e1000e")
        f.kernel.setDefaultDriver("0000:01:01.0", "e1000e")
        try f.bindLink("0000:01:02.0", "e1000e")
        f.kernel.setDefaultDriver("0000:01:02.0", "e1000e")
        // The second member's vfio-pci probe fails.
        f.kernel.failWrite("/sys/bus/pci/devices/0000:01:02.0/driver_override")
        #expect(throws: VFIOError.self) { _ = try f.host.bind(PCIAddress(parsing: "0000:01:01.0"), group: true) }
        #expect(f.driver("0000:01:01.0") == "e1000e" && f.driver("0000:01:02.0") == "e1000e")
        #expect(f.override("0000:01:01.0") == nil)
        #expect(f.host.bindingRecord(try PCIAddress(parsing: "0000:01:01.0")) == nil)
    }

    @Test func bridgesAndGrouplessDevicesAreRefused() throws {
        let f = try guestLikeFixture()
        #expect(throws: VFIOError.self) { _ = try f.host.bindDevice(PCIAddress(parsing: "0000:00:04.0")) }
        do { _ = try f.host.bind(PCIAddress(parsing: "0000:00:06.0")) } catch {
            #expect(error.description.contains("no IOMMU group"))
        }
        #expect(f.kernel.log.isEmpty)
    }

    @Test func missingVFIODriverSaysModprobe() throws {
        let f = try guestLikeFixture()
        try f.fm.removeItem(atPath: f.root + "/sys/bus/pci/drivers/vfio-pci")
        do { _ = try f.host.bind(PCIAddress(parsing: "0000:00:02.0")); Issue.record("no error") } catch {
            #expect(CLIWording.text(error.remedies)?.contains("modprobe vfio-pci") == true)
        }
    }

    @Test func unbindWithoutRestoreLeavesNoDriverAndKeepsTheRecord() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: "0000:00:05.0")
        _ = try f.host.bind(a)
        let o = try f.host.unbind(a)
        #expect(o.driver == nil && f.driver("0000:00:05.0") == nil && f.override("0000:00:05.0") == nil)
        #expect(f.host.bindingRecord(a)?.originalDriver == "nvme")
        _ = try f.host.unbind(a, restore: true)
        #expect(f.driver("0000:00:05.0") == "nvme")
    }

    @Test func recordJSONRoundTrips() throws {
        let r = BindingRecord(address: try PCIAddress(parsing: "0000:00:05.0"), originalDriver: "nvme",
                              originalDriverOverride: nil, boundTo: "vfio-pci")
        #expect(BindingRecord(json: r.json) == r)
        let data = Data(r.json.utf8)
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(obj["original_driver"] as? String == "nvme")
        #expect(obj["original_driver_override"] is NSNull)
    }
}

@Suite struct PCIDoctorTests {
    @Test func reportsEachCheckWithAFix() throws {
        let f = try guestLikeFixture()
        try f.write("/proc/interrupts", "  0:   44  IO-APIC   2-edge  timer\n")
        try f.write("/sys/module/iommufd/parameters/allow_unsafe_interrupts", "N\n")
        try f.write("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "65535\n")
        let fs = f.host.doctor(DoctorOptions(device: try PCIAddress(parsing: "0000:00:05.0"), memlockBytes: 1 << 50, probeKernel: false))
        func find(_ id: String) -> DoctorFinding? { fs.first { $0.id == id } }
        #expect(find("iommu.present")?.status == .ok)
        #expect(find("interrupt-remapping")?.status == .fail)
        #expect(find("interrupt-remapping").flatMap(DoctorWording.fix) != nil)
        #expect(find("param.iommufd.allow_unsafe_interrupts")?.status == .info)
        #expect(find("param.vfio_iommu_type1.dma_entry_limit").map(DoctorWording.detail)?.contains("65535") == true)
        #expect(find("dev.iommu")?.status == .fail)
        #expect(find("driver.vfio-pci")?.status == .ok)
        #expect(find("device.0000:00:05.0.group")?.status == .ok)
        #expect(find("device.0000:00:05.0.driver")?.status == .warn)
        // 1 PiB is more than any memlock limit unless unlimited / CAP_IPC_LOCK.
        #expect(find("memlock") != nil)
    }

    @Test func blockedGroupFails() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:01.0", "vfio-pci")
        try f.bindLink("0000:01:02.0", "e1000e")
        let fs = f.host.doctor(DoctorOptions(probeKernel: false))
        let g = try #require(fs.first { $0.id == "group.4" })
        #expect(g.status == .fail && DoctorWording.detail(g).contains("0000:01:02.0")
                && DoctorWording.fix(g)?.contains("--group") == true)
    }

    @Test func sizesParse() {
        #expect(parseByteSize("64M") == 64 << 20)
        #expect(parseByteSize("2GiB") == 2 << 30)
        #expect(parseByteSize("4096") == 4096)
        #expect(parseByteSize("1k") == 1024)
        #expect(parseByteSize("lots") == nil)
        #expect(formatBytes(64 << 20) == "64 MiB")
    }
}

@Suite struct PCIVirtioIOMMUNamingTests {
    @Test func virtioIOMMUNamedAfterItsPCIFunctionIsRecognised() throws {
        let f = try PCIFixture()
        try f.link("/sys/class/iommu/0000:00:02.0", to: "../../devices/pci0000:00/0000:00:02.0/virtio0/iommu/0000:00:02.0")
        #expect(f.host.iommus().first?.kind == .virtio)
        #expect(f.host.interruptRemapping().state == .disabled)
        // Registered but covering no device: doctor says so.
        let fs = f.host.doctor(DoctorOptions(probeKernel: false))
        #expect(fs.first { $0.id == "iommu.present" }?.status == .fail)
    }
}

@Suite struct PCINinePTests {
    @Test func mountedNinePShareIsAUse() throws {
        let f = try guestLikeFixture()
        try f.addDevice("0000:00:11.0", vendor: 0x1af4, device: 0x1009, cls: 0x000200, driver: "virtio-pci", group: 9)
        try f.write("/sys/bus/pci/devices/0000:00:11.0/virtio1/mount_tag", "host\0")
        try f.write("/proc/self/mountinfo", "17 1 0:15 / / ro,relatime - 9p host ro,access=client,msize=512000,trans=virtio\n")
        let u = f.host.uses(of: try PCIAddress(parsing: "0000:00:11.0"))
        #expect(u.count == 1 && u.first?.kind == .mounted && u.first?.detail.contains("\"host\" is mounted on /") == true)
        #expect(f.host.readiness(of: try f.host.device(try PCIAddress(parsing: "0000:00:11.0"))) == .inUse)
    }
}

@Suite struct PCIOpenVFIONodeTests {
    @Test func unbindRefusesWhileAProcessHoldsTheCdev() throws {
        let f = try guestLikeFixture()
        let a = try f.bindHeldByQEMU("0000:00:02.0")
        let error = try #require(f.refusedUnbind(a))
        #expect(error.description.contains("pid 4242 (qemu-system-x86)"))
        #expect(CLIWording.text(error.remedies)?.contains("--force") == true)
        #expect(f.driver("0000:00:02.0") == "vfio-pci")
        _ = try f.host.unbind(a, restore: true, force: true)
        #expect(f.driver("0000:00:02.0") == nil)
    }
}
