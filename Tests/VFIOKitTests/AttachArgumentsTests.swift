import Testing
@testable import VFIOCommands
import VFIOKit

@Suite struct AttachArgumentsTests {
    @Test func sizesTakeBinarySuffixesAndHex() {
        #expect(ArgumentValues.size("4096") == 4096)
        #expect(ArgumentValues.size("0x1000") == 4096)
        #expect(ArgumentValues.size("64K") == 65536)
        #expect(ArgumentValues.size("2M") == 2 << 20)
        #expect(ArgumentValues.size("2MiB") == 2 << 20)
        #expect(ArgumentValues.size("1g") == 1 << 30)
        #expect(ArgumentValues.size("4kb") == 4096)
        #expect(ArgumentValues.size("") == nil)
        #expect(ArgumentValues.size("M") == nil)
        #expect(ArgumentValues.size("12x") == nil)
        #expect(ArgumentValues.size("99999999999999999G") == nil)
    }

    @Test func mapRequestsParseSizeIOVAAndBacking() throws {
        #expect(try MapRequest(parsing: "2M") == MapRequest(size: 2 << 20))
        #expect(try MapRequest(parsing: "64K@0x100000") == MapRequest(size: 65536, iova: 0x100000))
        #expect(try MapRequest(parsing: "2M@4M,memfd") == MapRequest(size: 2 << 20, iova: IOVA(4 << 20), backing: .memfd))
        #expect(try MapRequest(parsing: "4M,huge") == MapRequest(size: 4 << 20, backing: .huge))
        for bad in ["3K", "0", "2M@0x1001", "2M,weird", "abc", "4K@", "1M,huge", "8K@0xfffffffffffff000"] {
            let e = #expect(throws: VFIOError.self, "\(bad)") { _ = try MapRequest(parsing: bad) }
            #expect(e?.description.contains(bad) == true)
            #expect(e?.hint?.contains("SIZE[@IOVA]") == true)
        }
    }

    @Test func barMapRequestsParseDeviceBAROffsetSizeAndIOVA() throws {
        let b = try PCIAddress(parsing: "0000:01:01.0")
        #expect(try BARMapRequest(parsing: "0000:01:01.0/0,4K@0x200000") == BARMapRequest(device: b, bar: 0, size: 4096, iova: 0x200000))
        #expect(try BARMapRequest(parsing: "01:01.0/2+0x1000,8K") == BARMapRequest(device: b, bar: 2, offset: 4096, size: 8192))
        #expect(try BARMapRequest(parsing: "01:01.0/0+0x1000,8K@2M").description == "0000:01:01.0/0+0x1000,8K@0x200000")
        for bad in ["01:01.0", "01:01.0/0", "01:01.0/6,4K", "01:01.0/x,4K", "01:01.0/0,3K", "01:01.0/0+0x10,4K",
                    "01:01.0/0,4K@0x1001", "zz/0,4K", "01:01.0/0,0"] {
            let e = #expect(throws: VFIOError.self, "\(bad)") { _ = try BARMapRequest(parsing: bad) }
            #expect(e?.description.contains(bad) == true, "\(String(describing: e))")
            #expect(e?.hint?.contains("BDF/BAR[+OFFSET],SIZE[@IOVA]") == true)
        }
    }

    @Test func ioasAndHWPTChoices() throws {
        #expect(try IOASChoice(parsing: "new") == .new)
        #expect(try IOASChoice(parsing: "3") == .existing(3))
        #expect(try IOASChoice(parsing: "0x10") == .existing(16))
        #expect(throws: VFIOError.self) { _ = try IOASChoice(parsing: "0") }
        #expect(throws: VFIOError.self) { _ = try IOASChoice(parsing: "old") }
        #expect(try HWPTRequest(parsing: "paging").flags == [])
        #expect(try HWPTRequest(parsing: "nest-parent,dirty-tracking").flags == [.nestParent, .dirtyTracking])
        let e = #expect(throws: VFIOError.self) { _ = try HWPTRequest(parsing: "nest-parent,pasidx") }
        #expect(e?.description.contains("pasidx") == true)
        #expect(HWPTRequest.flagNames([.dirtyTracking, .nestParent]) == ["nest-parent", "dirty-tracking"])
    }

    @Test func widthsOffsetsAndValuesAreChecked() throws {
        let ok = try RegisterAccess(operation: .write, offset: "0x4", value: "0x0006", width: 2, allowed: [1, 2, 4])
        #expect(ok.offset == 4 && ok.value == 6)
        #expect(try RegisterAccess(operation: .read, offset: "8", value: nil, width: 8, allowed: [1, 2, 4, 8]).offset == 8)
        func fails(_ op: RegisterOperation, _ o: String, _ v: String?, _ w: Int, _ allowed: [Int] = [1, 2, 4], _ text: String) {
            let e = #expect(throws: VFIOError.self) { _ = try RegisterAccess(operation: op, offset: o, value: v, width: w, allowed: allowed) }
            #expect(e?.description.contains(text) == true, "\(e?.description ?? "")")
        }
        fails(.read, "0", nil, 3, [1, 2, 4], "width 3")
        fails(.read, "0", nil, 8, [1, 2, 4], "width 8")
        fails(.read, "2", nil, 4, [1, 2, 4], "not aligned")
        fails(.write, "0", "0x1ff", 1, [1, 2, 4], "does not fit")
        fails(.write, "0", nil, 4, [1, 2, 4], "write needs a VALUE")
        fails(.read, "0", "5", 4, [1, 2, 4], "read takes no value")
        fails(.read, "zz", nil, 4, [1, 2, 4], "not a number")
        #expect(AccessWidth.hex(0x10000ed, width: 4) == "0x010000ed")
        #expect(AccessWidth.hex(0x1234, width: 2) == "0x1234")
    }

    @Test func launcherSubstitutesIdsAndNormalizesBDFs() throws {
        let l = Launcher(fds: [("iommufd", 3), ("device", 4), ("device:0000:00:03.0", 4)],
                         values: [("ioas", "2"), ("devid:0000:00:03.0", "1")])
        #expect(try l.substitute(["fd={iommufd}", "{device:00:03.0}", "ioas={ioas}", "{devid:0:00:03.0}"])
                == ["fd=3", "4", "ioas=2", "1"])
        let e = #expect(throws: VFIOError.self) { _ = try l.substitute(["{hwpt}"]) }
        #expect(e?.hint?.contains("{ioas}") == true)
    }

    @Test func attachPlansAreValidated() {
        func usage(_ args: [String], _ text: String) {
            let r = vfioctl(["attach"] + args)
            #expect(r.status == 64, "\(args): \(r.err)")
            #expect(r.err.contains(text), "\(args): \(r.err)")
        }
        usage([], "at least one device")
        usage(["00:03.0", "00:03.0"], "named twice")
        usage(["00:03.0", "--hold", "--exec", "--", "true"], "exclude each other")
        usage(["00:03.0", "--hwpt", "nest-parent", "--exec", "--", "true"], "--prebound")
        usage(["00:03.0", "--prebound"], "only applies to --exec")
        usage(["00:03.0", "--container", "--ioas", "3"], "type1 container")
        usage(["00:03.0", "--map", "3K"], "multiple of 4 KiB")
        usage(["00:03.0", "--ioas", "zero"], "neither `new` nor an IOAS id")
        usage(["00:03.0", "--exec", "--"], "needs a program")
        usage(["0:0:0:0"], "not a PCI address")
        usage(["0:0:0:0"], "nor is it an mdev's UUID")
        usage(["00:03.0", "--vf-token", "nope"], "--vf-token nope is not a UUID")
        usage(["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "--vf-token", "52ac9bff-3a88-4fbd-901a-0d767c3b6c97"],
              "an mdev takes no VF token")
        usage(["00:03.0", "--vf-token", "52ac9bff-3a88-4fbd-901a-0d767c3b6c97", "--exec", "--", "true"], "add --prebound")
        usage(["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "83B8F4F2-509F-382F-3C1E-E6BFE0FA1001"], "named twice")
        usage(["00:03.0", "--map-bar", "01:01.0/0,4K@0x200000", "--container"], "needs iommufd")
        usage(["00:03.0", "--map-bar", "00:03.0/0,4K", "--exec", "--", "true"], "handed over unbound")
        usage(["00:03.0", "--map-bar", "01:01.0/0,3K"], "multiples of 4 KiB")
        let config = vfioctl(["config", "00:03.0", "read", "2", "--width", "4"])
        #expect(config.status == 64 && config.err.contains("not aligned"))
        let bar = vfioctl(["bar", "00:03.0", "6", "read", "0"])
        #expect(bar.status == 64 && bar.err.contains("BAR 6"))
    }

    @Test func devicesNotOnVFIOAreRefusedBeforeAnythingOpens() throws {
        let f = try guestLikeFixture()
        let nvme = vfioctl(["attach", "0000:00:05.0"], root: f.root)
        #expect(nvme.status == 1 && nvme.err.contains("not bound to vfio-pci (its driver is nvme)"), "\(nvme.err)")
        #expect(nvme.err.contains("vfioctl bind 0000:00:05.0"))
        let missing = vfioctl(["attach", "0000:00:1f.7"], root: f.root)
        #expect(missing.status == 1 && missing.err.contains("no PCI device 0000:00:1f.7"), "\(missing.err)")
        let json = vfioctl(["config", "0000:00:05.0", "read", "0", "--json"], root: f.root)
        #expect(json.status == 1 && json.out.contains("\"error\""))
    }

    @Test func permissionErrorsNameTheNodeAndTheMode() {
        let e = PCIHost.system.explainAccess(VFIOError(operation: .syscall(.open), errno: .permissionDenied, object: "/dev/null"))
        #expect(e.detail?.contains("/dev/null is crw-rw-rw-") == true, "\(e.detail ?? "")")
        #expect(e.detail?.contains("this process runs as uid") == true)
        #expect(e.hint?.contains("udev") == true)
        #expect(FileStatus(mode: 0o020600).modeString == "crw-------")
    }
}
