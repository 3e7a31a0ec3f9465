#!/usr/bin/env bash
# Writes the disk image the guest's nvme starts from in test runs
# (Scripts/vm.sh --nvme-image FILE): 64 MiB, an ext4 file system in the first
# 48 MiB (the CLI tests mount it) and a known pattern in the last 16 MiB,
# LBAs 98304-131071 of 512 bytes: each block starts with
# "VFIOKIT-NVME-PATTERN LBA <10 digits>\n" followed by seeded random bytes.
# The NVMe driver's guest tests read the pattern back through the driver and
# compare with the untouched copy vm.sh gives the guest ($VFIOKIT_NVME_IMAGE).
#
#   Scripts/nvme-test-image.sh OUT
set -euo pipefail
out=${1:?usage: Scripts/nvme-test-image.sh OUT}
mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4) || { echo "mkfs.ext4 not found (apt-get install e2fsprogs)" >&2; exit 1; }
rm -f "$out"
truncate -s 64M "$out"
"$mkfs" -q -F -L vfiokit -E lazy_itable_init=0,lazy_journal_init=0 "$out" 48M
python3 - "$out" <<'EOF'
import random, sys
first, count = 98304, 32768
rng = random.Random(20261129)
with open(sys.argv[1], "r+b") as f:
    f.seek(first * 512)
    for lba in range(first, first + count):
        head = b"VFIOKIT-NVME-PATTERN LBA %010d\n" % lba
        f.write(head + rng.randbytes(512 - len(head)))
EOF
