#!/usr/bin/env python3
"""Writes the seed corpus (Fuzz/Corpus/TARGET/*): one or more well-formed inputs per
target, shaped like what the kernel, sysfs or a user really gives. Run it again after
changing a target's input layout (Fuzz/README.md)."""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))


def seed(target, name, data):
    d = os.path.join(here, "Corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def cap(id_, version, next_):
    return struct.pack("<HHI", id_, version, next_)


# struct vfio_region_info (32 bytes) + sparse mmap (2 areas) + type caps, as vfio-pci writes them.
base = 32
sparse = cap(1, 1, base + 16 + 32) + struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, 0x1000, 0x3000, 0x1000)
typ = cap(2, 1, base + 16 + 32 + 16 + 8) + struct.pack("<II", 0x80000000, 1)
msix = cap(3, 1, 0)
region = struct.pack("<IIIIQQ", base + len(sparse) + len(typ) + len(msix), 1 | 2 | 4 | 8, 0, base, 0x4000, 0) + sparse + typ + msix
seed("region-info", "bar0-sparse-type-msix", region)
seed("region-info", "config-no-caps", struct.pack("<IIIIQQ", 32, 3, 7, 0, 0x1000, 7 << 40))
seed("region-info", "caps-loop", struct.pack("<IIIIQQ", 48, 8, 0, 32, 0, 0) + cap(1, 1, 32) + struct.pack("<II", 1, 0))

# struct vfio_iommu_type1_info (24 bytes) + IOVA ranges, migration and DMA avail caps.
ranges = cap(1, 1, 24 + 16 + 32) + struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, 0xfedfffff, 0xfef00000, 0xffffffffffff)
mig = cap(2, 1, 24 + 16 + 32 + 32) + struct.pack("<IIQQ", 1, 0, 0x1000, 256 << 20)
avail = cap(3, 1, 0) + struct.pack("<II", 65535, 0)
type1 = struct.pack("<IIQII", 24 + len(ranges) + len(mig) + len(avail), 1 | 2, 0x40201000, 24, 0) + ranges + mig + avail
seed("type1-info", "ranges-migration-avail", type1)
seed("type1-info", "no-caps", struct.pack("<IIQII", 24, 1, 0x1000, 0, 0))

# struct vfio_pci_hot_reset_info (12 bytes) + vfio_pci_dependent_device entries (8 bytes).
dev = lambda gid, bus, devfn: struct.pack("<IHBB", gid, 0, bus, devfn)
seed("hot-reset-info", "group-ids", struct.pack("<III", 12 + 16, 0, 2) + dev(7, 1, 8) + dev(7, 1, 16))
seed("hot-reset-info", "cdev-owned", struct.pack("<III", 12 + 16, 1 | 2, 2) + dev(3, 0, 24) + dev(0xfffffffe, 0, 32))

# vEVENTQ: event size, the last sequence (-1: none), then header (flags, sequence) + event records.
ev = lambda flags, seq, data: struct.pack("<II", flags, seq) + data
seed("vevent", "three-events-and-a-lost-marker",
     struct.pack("<BI", 16, 0xffffffff) + ev(0, 0, b"A" * 16) + ev(0, 1, b"B" * 16) + ev(1, 5, b"") + ev(0, 6, b"C" * 16))
seed("vevent", "sequence-wrap", struct.pack("<BI", 8, 0x7ffffffe) + ev(0, 0x7fffffff, b"x" * 8) + ev(0, 0, b"y" * 8))

# device-info: u16 split, a vfio_device_info answer (24 bytes + PCI atomic cap), then a region info answer.
devinfo = struct.pack("<IIIIII", 24 + 16, 2 | 8, 9, 5, 24, 0) + cap(4, 1, 0) + struct.pack("<II", 7, 0)
regcfg = struct.pack("<IIIIQQ", 32, 3, 7, 0, 0x1000, 7 << 40)
seed("device-info", "pci-atomic-and-config", struct.pack("<H", len(devinfo)) + devinfo + regcfg)
seed("device-info", "region-with-caps", struct.pack("<H", 24) + struct.pack("<IIIIII", 24, 2, 9, 5, 0, 0) + region)

# config-caps: size pick (2: 4 KiB), offset pick (0: index 7 << 40), then config space:
# PM -> MSI -> PCIe; AER -> vendor cap at 0x140 pointing back at 0x100 (a loop).
c = bytearray(4096)
c[0:4] = bytes([0x34, 0x12, 0xe8, 0x11]); c[4] = 0x06; c[6] = 0x10; c[0x0e] = 0; c[0x34] = 0x40
c[0x40:0x42] = bytes([0x01, 0x50]); c[0x50:0x52] = bytes([0x05, 0x70]); c[0x70:0x72] = bytes([0x10, 0x90]); c[0x90:0x92] = bytes([0x11, 0])
c[0x100:0x104] = struct.pack("<I", 0x0001 | 2 << 16 | 0x140 << 20)
c[0x140:0x144] = struct.pack("<I", 0x000b | 1 << 16 | 0x100 << 20)
seed("config-caps", "pcie-with-loop", bytes([2, 0]) + bytes(c))
seed("config-caps", "conventional-256", bytes([1, 0]) + bytes(c[:256]))

# hw-info: type pick (1: VT-d, 4: AMD, 5: selftest), capabilities, max PASID log2, data.
seed("hw-info", "intel-vtd", bytes([1]) + struct.pack("<QB", 1, 20) + struct.pack("<IIQQ", 0, 0, 0x00d2008c22260686, 0x0000000000f00f1a))
seed("hw-info", "amd", bytes([4]) + struct.pack("<QB", 0, 16) + struct.pack("<QQ", 0x246577efa2254afa, 0x10))
seed("hw-info", "smmuv3", bytes([2]) + struct.pack("<QB", 1, 0) + struct.pack("<IIIIIIIIII", 0, 0, 1, 2, 3, 4, 5, 6, 7, 8))
seed("hw-info", "selftest", bytes([5]) + struct.pack("<QB", 0, 0) + struct.pack("<II", 0, 0xdeadbeef))

# sysfs: the group link's name, then the files of SysfsTree.files in order, NUL-separated.
files = ["0x1234\n", "0x11e8\n", "0x00ff00\n", "0x1af4\n", "0x1100\n", "(null)\n", "-1\n",
         "\x34\x12\xe8\x11\x06\x01\x10\x02\x10\x01\x80\x01\x01\x01\x01\x80", "1\n", "DMA\n", "f00f5a\n",
         "22 1 0:21 / /proc rw - proc proc rw\n36 25 259:1 / /mnt/my\\040data rw,relatime - ext4 /dev/nvme0n1 rw\n"
         "40 25 0:40 / /srv rw - 9p share rw,trans=virtio\n",
         "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1 partition 1024 0 -2\n",
         "           CPU0\n 24:          0  IR-PCI-MSIX-0000:00:03.0    0-edge      vfio\n  0:   10   IO-APIC   2-edge  timer\n",
         "ttyS0 tty0\n", "259:1\n", "up\n", "0x1003\n", "share\n"]
seed("sysfs", "edu-in-group-7", "7\0" + "\0".join(files))
seed("sysfs", "no-group-bridge", "\0" + "\0".join(["0x8086", "0x1234", "0x060400", "", "", "vfio-pci", "0", "\x86\x80\x34\x12" + "\0" * 10 + "\x01", "0"]))

# binding-record: what BindingRecord.json writes.
seed("binding-record", "nvme", '{"address":"0000:00:05.0","bound_to":"vfio-pci","original_driver":"nvme","original_driver_override":null}\n')
seed("binding-record", "override", '{"address":"0000:01:01.0","bound_to":"vfio-pci","original_driver":null,"original_driver_override":"pci-stub"}\n')

# cli-values: what users type.
for i, s in enumerate(["2M@0x100000,memfd", "64K", "0000:00:03.0", "00:03.0", "0x1_0000", "4096", "1GiB", "new",
                       "nest-parent,dirty-tracking", "2M@0x200000,huge", "18446744073709547520"]):
    seed("cli-values", f"seed-{i}", s)
