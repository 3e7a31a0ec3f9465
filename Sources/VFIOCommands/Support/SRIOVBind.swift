import ArgumentParser
import FoundationEssentials
import VFIOKit

/// `vfioctl bind PF --sriov N [--vf-token UUID]`: the SR-IOV half of `bind`,
/// after the PF is on vfio-pci.
struct SRIOVBindOptions: ParsableArguments {
    @Option(name: .customLong("sriov"),
            help: ArgumentHelp("Create this many VFs on the PF (0 removes them), after binding it to vfio-pci.", valueName: "N"))
    var numVFs: Int?

    @Option(name: .customLong("vf-token"), help: ArgumentHelp("Set the PF's VF token: the UUID its VFs open with.", valueName: "uuid"))
    var vfToken: String?

    var requested: Bool { numVFs != nil || vfToken != nil }
    var token: UUID? { vfToken.flatMap { UUID(uuidString: $0) } }

    func validate(group: Bool, driver: String) throws {
        if let vfToken, UUID(uuidString: vfToken) == nil {
            throw ValidationError("--vf-token \(vfToken) is not a UUID; write it as 8-4-4-4-12 hex digits (`uuidgen` makes one)")
        }
        if let n = numVFs, n < 0 { throw ValidationError("--sriov takes the number of VFs, 0 or more") }
        if requested && group { throw ValidationError("--sriov and --vf-token act on one PF: leave out --group") }
        if requested && driver != VFIODrivers.vfioPCI { throw ValidationError("--sriov and --vf-token are vfio-pci's: leave out --driver") }
    }

    /// Sets the token (when given: the PF's cdev is opened and bound to a
    /// fresh iommufd with it, which sets it while no VF is in use; vfio-pci
    /// keeps it after the PF closes), then the number of VFs.
    func apply(to pf: PCIAddress, host: PCIHost) throws(VFIOError) -> SRIOVState {
        guard let state = try host.sriov(of: pf) else {
            throw VFIOError.invalid(.step(.setNumVFs), "\(pf) is not an SR-IOV physical function (it has no sriov_totalvfs)",
                                    object: pf.description)
        }
        if let token {
            let iommufd = try IOMMUFD()
            defer { try? iommufd.close() }
            let device = try VFIODevice.open(pf, host: host)
            defer { try? device.close() }
            do throws(VFIOError) {
                _ = try device.bind(to: iommufd, token: token)
            } catch {
                throw host.explainVFToken(error, device: pf, tokenGiven: true)
            }
        }
        return try host.setNumVFs(numVFs ?? state.numVFs, on: pf)
    }

    static func textLines(_ pf: PCIAddress, _ s: SRIOVState, host: PCIHost, token: UUID?) -> [String] {
        var out = ["\(pf): \(s.numVFs) of \(s.totalVFs) VFs" + (token != nil ? ", VF token set" : "")]
        for vf in s.virtualFunctions {
            let d = try? host.device(vf)
            out.append("  VF \(vf): driver \(d?.driver ?? "none"), IOMMU group \(d?.iommuGroup.map(String.init) ?? "none")"
                       + (d?.vfioCdevPath.map { ", \($0)" } ?? ""))
        }
        if let vf = s.virtualFunctions.first {
            if let token {
                out.append("  a VF opens only with the PF's VF token: `vfioctl attach \(vf) --vf-token \(token.uuidString.lowercased())` "
                           + "(VFIODevice.bind(to:token:), VFIOGroup.device(_:vfToken:))")
            } else {
                out.append("  a VF opens only with the PF's VF token: vfioctl attach VF --vf-token UUID "
                           + "(VFIODevice.bind(to:token:), VFIOGroup.device(_:vfToken:))")
            }
        }
        return out
    }
}
