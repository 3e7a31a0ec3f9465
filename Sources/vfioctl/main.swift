print("vfioctl: not built yet")
