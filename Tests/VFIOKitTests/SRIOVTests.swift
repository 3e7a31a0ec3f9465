import Foundation
import SystemPackage
import Testing
import VFIOKit

/// SR-IOV in sysfs on a fixture: a PF (02:00.0, an nvme with two VFs to give)
/// on vfio-pci. The checks setNumVFs makes before it writes sriov_numvfs, and
/// how the VF token rules explain an open the kernel refused.
@Suite struct SRIOVTests {
    static let pf = "0000:02:00.0", vf = "0000:02:00.1"

    func fixture(numVFs: Int = 0, enableSRIOV: String = "Y") throws -> PCIFixture {
        let f = try PCIFixture()
        try f.addDevice(Self.pf, vendor: 0x1b36, device: 0x0010, cls: 0x010802, driver: "vfio-pci", group: 9)
        try f.write(f.dev(Self.pf) + "/sriov_totalvfs", "2\n")
        try f.write(f.dev(Self.pf) + "/sriov_numvfs", "\(numVFs)\n")
        try f.write("/sys/module/vfio_pci/parameters/enable_sriov", enableSRIOV + "\n")
        for n in 0..<numVFs {
            let vf = "0000:02:00.\(n + 1)"
            try f.addDevice(vf, vendor: 0x1b36, device: 0x0010, cls: 0x010802, driver: "vfio-pci", group: 10 + n)
            try f.link(f.dev(Self.pf) + "/virtfn\(n)", to: "../\(vf)")
            try f.link(f.dev(vf) + "/physfn", to: "../\(Self.pf)")
        }
        return f
    }

    @Test func theStateIsReadFromSysfs() throws {
        let f = try fixture(numVFs: 2)
        let pf = try PCIAddress(parsing: Self.pf), vf = try PCIAddress(parsing: Self.vf)
        let s = try #require(try f.host.sriov(of: pf))
        #expect(s.totalVFs == 2 && s.numVFs == 2 && s.virtualFunctions.map(\.description) == [Self.vf, "0000:02:00.2"])
        #expect(f.host.physicalFunction(of: vf) == pf)
        #expect(try f.host.sriov(of: vf) == nil)
        #expect(f.host.vfioPCICreatesVFs == true)
    }

    @Test func setNumVFsRefusesWhatThePCICoreOrVFIOPCIWouldWithTheReason() throws {
        let pf = try PCIAddress(parsing: Self.pf)
        do {
            let f = try fixture(numVFs: 2)
            let e = #expect(throws: VFIOError.self) { try f.host.setNumVFs(1, on: pf) }
            #expect(e?.operation == .step(.setNumVFs) && e?.detail?.contains("only through 0") == true, "\(String(describing: e))")
            let vf = try PCIAddress(parsing: Self.vf)
            let notPF = #expect(throws: VFIOError.self) { try f.host.setNumVFs(1, on: vf) }
            #expect(notPF?.detail?.contains("it is a VF of \(Self.pf)") == true, "\(String(describing: notPF))")
            // A VF's cdev held by a process: removing the VFs would wait; named, with the kill.
            try f.link("/proc/4242/fd/7", to: try #require(try f.host.device(vf).vfioCdevPath))
            try f.write("/proc/4242/comm", "qemu-system-x86\n")
            let held = #expect(throws: VFIOError.self) { try f.host.setNumVFs(0, on: pf) }
            #expect(held?.detail?.contains("pid 4242 (qemu-system-x86) has /dev/vfio/devices/") == true, "\(String(describing: held))")
            #expect(held?.remedies == [.stopProcesses([.init(pid: 4242, command: "qemu-system-x86")])])
            #expect(!f.kernel.log.contains { $0.contains("sriov_numvfs") })
        }
        do {
            let f = try fixture(enableSRIOV: "N")
            let e = #expect(throws: VFIOError.self) { try f.host.setNumVFs(2, on: pf) }
            #expect(e?.detail?.contains("enable_sriov parameter is set, and it is not") == true, "\(String(describing: e))")
            let tooMany = #expect(throws: VFIOError.self) { try f.host.setNumVFs(3, on: pf) }
            #expect(tooMany?.detail?.contains("at most 2 VFs") == true)
            #expect(f.kernel.log.isEmpty)
        }
    }

    @Test func refusedOpensAreExplainedByTheTokenRules() throws {
        let f = try fixture(numVFs: 2)
        let vf = try PCIAddress(parsing: Self.vf), pf = try PCIAddress(parsing: Self.pf)
        let bind = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .permissionDenied, object: "/dev/vfio/devices/vfio1")
        let missing = f.host.explainVFToken(bind, device: vf, tokenGiven: false)
        #expect(missing.detail == "\(Self.vf) is a VF of \(Self.pf), which is bound to vfio-pci: opening it needs the VF token its PF's user set")
        let wrong = f.host.explainVFToken(bind, device: vf, tokenGiven: true)
        #expect(wrong.detail?.contains("the VF token given is not the one its PF's user set") == true)
        #expect(wrong.hint?.contains("VFIODevice.bind(to:token:)") == true)
        let busyPF = f.host.explainVFToken(bind, device: pf, tokenGiven: false)
        #expect(busyPF.detail?.contains("an SR-IOV PF whose VFs are in use") == true)
        let other = VFIOError(operation: .ioctl(.vfioDeviceBindIOMMUFD), errno: .resourceBusy, object: "x")
        #expect(f.host.explainVFToken(other, device: vf, tokenGiven: false) == other)
    }
}
