import VFIOKit

extension AttachSession {
    /// The fds and ids `--exec` hands to its program, by placeholder and
    /// environment variable (the names are documented in `vfioctl attach --help`).
    func launcher() -> Launcher {
        var fds: [(name: String, fd: Int32)] = []
        var values: [(name: String, value: String)] = []
        var env: [String: String] = [:]
        func envName(_ a: VFIODeviceName) -> String {
            String(a.description.map { $0 == ":" || $0 == "." || $0 == "-" ? "_" : $0 })
        }
        env["VFIOKIT_HANDOFF"] = plan.container ? "container" : (plan.bind ? "prebound" : "unbound")
        if let iommufd {
            fds.append(("iommufd", iommufd.fd.numberForHandoff))
            env["VFIOKIT_IOMMUFD_FD"] = String(iommufd.fd.numberForHandoff)
        }
        if let c = vfioContainer {
            fds.append(("container", c.fd.numberForHandoff))
            env["VFIOKIT_CONTAINER_FD"] = String(c.fd.numberForHandoff)
            for g in groups {
                fds.append(("group:\(g.number)", g.fd.numberForHandoff))
                env["VFIOKIT_GROUP_FD_\(g.number)"] = String(g.fd.numberForHandoff)
            }
            if let first = devices.first, let g = first.device.group {
                fds.append(("group", g.fd.numberForHandoff))
                env["VFIOKIT_GROUP_FD"] = String(g.fd.numberForHandoff)
            }
        }
        for (i, d) in devices.enumerated() {
            let fd = d.device.fd.numberForHandoff
            fds.append(("device:\(d.address)", fd))
            env["VFIOKIT_DEVICE_FD_\(envName(d.address))"] = String(fd)
            if let id = d.deviceID {
                values.append(("devid:\(d.address)", String(id)))
                env["VFIOKIT_DEVICE_ID_\(envName(d.address))"] = String(id)
            }
            if i == 0 {
                fds.append(("device", fd))
                env["VFIOKIT_DEVICE_FD"] = String(fd)
                env["VFIOKIT_DEVICE_BDF"] = d.address.description
                values.append(("bdf", d.address.description))
                if let id = d.deviceID {
                    values.append(("devid", String(id)))
                    env["VFIOKIT_DEVICE_ID"] = String(id)
                }
            }
        }
        if let ioas {
            values.append(("ioas", String(ioas.objectID)))
            env["VFIOKIT_IOAS_ID"] = String(ioas.objectID)
        }
        if let hwpt {
            values.append(("hwpt", String(hwpt.objectID)))
            env["VFIOKIT_HWPT_ID"] = String(hwpt.objectID)
        }
        return Launcher(fds: fds, values: values, environment: env)
    }
}
