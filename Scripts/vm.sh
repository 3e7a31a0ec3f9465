#!/usr/bin/env bash
# Runs one command as root in the VFIOKit test guest: a QEMU (TCG) q35 machine with
# an emulated IOMMU, whose root filesystem is this host's / (read-only, over 9p).
# See --help, and docs in /work/shared/docs/test-machine.md for the background.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: Scripts/vm.sh [options] -- COMMAND [ARGS...]

Boots the test guest, runs COMMAND as root in the current directory (same path as
on the host), and exits with COMMAND's exit status. COMMAND's stdout and stderr
are the host's stdout and stderr; the kernel console goes to a log file.

Options:
  --iommu intel|amd|virtio   emulated IOMMU (default: intel)
  --memory SIZE              guest memory, QEMU syntax (default: 2G)
  --timeout SECS             kill the guest after SECS seconds (default: 600; 0: never)
  --kernel BZIMAGE           guest kernel (default: Scripts/test-kernel.sh builds/reuses one)
  --qemu BINARY              QEMU to run (default: $VFIOKIT_QEMU, else qemu-system-x86_64;
                             for --iommu amd, Debian 12's QEMU 7.2 that Scripts/setup.sh
                             unpacks into the cache: QEMU 10.0's AMD-Vi does not
                             translate emulated devices' DMA)
  --append ARGS              extra kernel command line arguments
  --qemu-arg ARG             extra QEMU argument (repeatable), e.g. --qemu-arg=-trace
  --tcg-thread single|multi  TCG with one thread for all vCPUs (default) or a thread per
                             vCPU. QEMU 10.0's multi-threaded TCG can trip an assertion
                             (iotlb_to_section) or hang when a device's BARs are remapped
                             (an FLR on every VFIO open and close) while the other vCPU
                             runs, and a halted vCPU can miss its timer wakeup: the guest
                             stalls for good (console: "rcu: INFO: rcu_sched detected
                             stalls", "timer wakeup didn't happen", "Possible timer
                             handling issue on cpu=0", the CPU idle in hlt); seen once in
                             a CI run of the guest suites and once in a local one. One
                             thread costs the guest suites about a fifth more time
  --nvme-image FILE          the nvme's disk starts as a copy of FILE (a multiple of 512
                             bytes) instead of a fresh ext4 image; the guest finds an
                             untouched copy at $VFIOKIT_NVME_IMAGE (tests compare with it)
  --nvme-null                the nvme is backed by QEMU's null-co driver (1 GiB, 512-byte
                             blocks, reads return zeros, writes are dropped): steady
                             numbers for benchmarks
  --sriov-pf                 add an SR-IOV physical function: an nvme (serial vfiokit-sriov, no
                             namespace) in an nvme-subsys, sriov_max_vfs=2, behind a PCIe root
                             port at 00:08.0 (the VFs need the port's bus), and boot with
                             vfio_pci.enable_sriov=1 so vfio-pci may create VFs on it
  --hugepage-1g              reserve one 1 GiB hugetlb page at boot (hugepagesz=1G hugepages=1) on a
                             CPU that has 1 GiB pages (-cpu max: pdpe1gb), with 4G of memory unless
                             --memory is given (with 3G the boot-time reservation fails: no free,
                             1 GiB-aligned GiB is left); /dev/hugepages stays 2 MiB, the 1 GiB page is
                             for mmap(MAP_HUGETLB | MAP_HUGE_1GB)
  -v, --verbose              print the run directory and the QEMU command line
  -h, --help                 this text
Environment: VFIOKIT_RESULTS (where runs are kept), VFIOKIT_CACHE (kernel cache).

Exit status: COMMAND's status; 124 if the guest timed out; 125 if the harness
failed (QEMU error, kernel panic, no status from the guest); 130 on Ctrl-C. Then
a message names the console log, which is kept.

Guest devices (fixed; the guest also exports their BDFs, see below):
  00:03.0            edu, alone in its IOMMU group
  00:04.0            pcie-pci-bridge; behind it 01:01.0 and 01:02.0, two edu
                     (one IOMMU group: the bridge and both edus). intel and amd only:
  00:06.0, 00:06.1   with --iommu virtio the pair is one multifunction slot instead
                     (one group of two, no bridge; QEMU 7.2 cannot do the bridge there)
  00:05.0            nvme, serial vfiokit0, 64 MiB ext4 image (fresh for each run;
                     see --nvme-image, --nvme-null), bound to the guest's nvme driver
  00:08.0            with --sriov-pf: a PCIe root port; behind it (bus 2 on intel and amd, 1 on virtio)
                     the SR-IOV PF, an nvme with 2 VFs to give (00.1, 00.2 once created),
                     bound to the guest's nvme driver at boot
  00:01.0            the AMD IOMMU's own PCI function (--iommu amd only)
  00:02.0            virtio-iommu-pci (--iommu virtio only)
  00:10.0-00:12.0    virtio-serial (command output), 9p root, 9p results
  00:13.0, 00:14.0   9p exports of the working tree and the current directory, when
                     they are under /tmp, /run or /dev/shm (see below)
  The edus have no driver. --iommu amd runs Debian 12's QEMU 7.2 (see --qemu) and boots with iommu.passthrough=1 (identity
  default domains; VFIO's are translated), virtio with allow_unsafe_interrupts.

In the guest, COMMAND sees:
  /run/vfiokit/devices   shell-sourceable, also in the environment:
      VFIOKIT_IOMMU VFIOKIT_EDU VFIOKIT_EDU_PAIR_A VFIOKIT_EDU_PAIR_B
          VFIOKIT_BRIDGE (empty with virtio) VFIOKIT_NVME VFIOKIT_NVME_BLOCK (/dev/nvme0n1)
          VFIOKIT_BRIDGE_BOOT_DRIVER (shpchp: it binds the bridge at boot; init unbinds it)
          VFIOKIT_SRIOV_PF (with --sriov-pf; empty otherwise)
  VFIOKIT_NVME_IMAGE     with --nvme-image: the disk's initial contents (read-only copy)
  VFIOKIT_GUEST=1, VFIOKIT_DEVICES_FILE=/run/vfiokit/devices
  VFIOKIT_SCRATCH=/tmp/vfiokit     writable scratch (tmpfs)
  VFIOKIT_RESULTS_DIR              writable, shared with the host: the run's
                                   results/ directory, same path on both sides
  HOME=/tmp/home, PATH includes /opt/swift/usr/bin
  Writable: /tmp, /run, /dev/shm, /dev/hugepages (16 x 2 MiB), the results dir.
  Everything else is the host's filesystem, read-only. The host's /tmp, /run and
  /dev/shm are hidden by the guest's own tmpfs there, except the working tree
  (this script's repository) and the current directory: when they are under one
  of them, each is exported read-only and mounted at the same path, so a clone
  in /tmp runs as it would anywhere else.

Runs are kept under ${VFIOKIT_RESULTS:-<repo>/.build/vm}/run-*/ (the newest 20):
console.log, qemu.log, command, status, nvme.img, results/. `latest` links to the
newest run.

Examples:
  Scripts/vm.sh -- true
  Scripts/vm.sh --iommu amd -- sh -c 'cat /run/vfiokit/devices; ls /dev/vfio'
  Scripts/vm.sh -- .build/debug/VFIOKitPackageTests.xctest --testing-library swift-testing
  Scripts/vm.sh --iommu virtio --timeout 120 -- sh -c 'echo vfio-pci > \
      /sys/bus/pci/devices/$VFIOKIT_EDU/driver_override && \
      echo $VFIOKIT_EDU > /sys/bus/pci/drivers_probe && ls /dev/vfio/devices'
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")

iommu=intel memory= timeout_secs=600 kernel= extra_append= verbose= nvme_image= nvme_null= tcg_thread=single sriov_pf= hugepage_1g=
extra_qemu=()
while [ $# -gt 0 ]; do
  case "$1" in
    --iommu) iommu=${2:?--iommu needs a value}; shift 2 ;;
    --iommu=*) iommu=${1#*=}; shift ;;
    --memory) memory=${2:?--memory needs a value}; shift 2 ;;
    --memory=*) memory=${1#*=}; shift ;;
    --timeout) timeout_secs=${2:?--timeout needs a value}; shift 2 ;;
    --timeout=*) timeout_secs=${1#*=}; shift ;;
    --kernel) kernel=${2:?--kernel needs a value}; shift 2 ;;
    --qemu) qemu_bin=${2:?--qemu needs a value}; shift 2 ;;
    --kernel=*) kernel=${1#*=}; shift ;;
    --append) extra_append=${2?--append needs a value}; shift 2 ;;
    --append=*) extra_append=${1#*=}; shift ;;
    --qemu-arg) extra_qemu+=("${2?--qemu-arg needs a value}"); shift 2 ;;
    --qemu-arg=*) extra_qemu+=("${1#*=}"); shift ;;
    --nvme-image) nvme_image=${2:?--nvme-image needs a file}; shift 2 ;;
    --nvme-image=*) nvme_image=${1#*=}; shift ;;
    --nvme-null) nvme_null=1; shift ;;
    --sriov-pf) sriov_pf=1; shift ;;
    --hugepage-1g) hugepage_1g=1; shift ;;
    --tcg-thread) tcg_thread=${2:?--tcg-thread needs multi or single}; shift 2 ;;
    --tcg-thread=*) tcg_thread=${1#*=}; shift ;;
    -v|--verbose) verbose=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "vm.sh: unknown argument '$1' (the command goes after --)" >&2; usage >&2; exit 125 ;;
  esac
done
[ $# -gt 0 ] || { echo "vm.sh: no command given" >&2; usage >&2; exit 125; }
if [ -z "$memory" ]; then if [ -n "$hugepage_1g" ]; then memory=4G; else memory=2G; fi; fi
case "$iommu" in intel|amd|virtio) ;; *) echo "vm.sh: --iommu must be intel, amd or virtio" >&2; exit 125 ;; esac
[[ "$timeout_secs" =~ ^[0-9]+$ ]] || { echo "vm.sh: --timeout must be a number of seconds" >&2; exit 125; }
case "$tcg_thread" in multi|single) ;; *) echo "vm.sh: --tcg-thread must be multi or single" >&2; exit 125 ;; esac

say() { printf 'vm.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 125; }

# --- kernel (test-kernel.sh prints its progress on stderr, the path on stdout)
if [ -z "$kernel" ]; then
  kernel=$("$here/test-kernel.sh") || die "Scripts/test-kernel.sh failed"
fi
[ -f "$kernel" ] || die "no kernel at $kernel"
kernel=$(realpath "$kernel")

# The kernel command line cannot carry spaces in init=.
init="$here/guest/init"
[[ "$init" != *[[:space:]]* ]] || die "the repository path must not contain spaces: $init"

# --- the run directory: also the guest's writable 9p export
base=${VFIOKIT_RESULTS:-$repo/.build/vm}
mkdir -p "$base"
base=$(realpath "$base")
# QEMU's option syntax splits at commas.
[[ "$base" != *,* ]] || die "the results directory must not contain commas: $base"
run=$(mktemp -d "$base/run-$(date +%Y%m%d-%H%M%S)-XXXX")
mkdir -p "$run/results"
ln -sfn "$(basename "$run")" "$base/latest"
# Keep the newest 20 runs. Older ones go once finished (status written) or two
# hours old: another vm.sh may still be using its directory.
ls -1dt "$base"/run-*/ 2>/dev/null | tail -n +21 | while read -r old; do
  if [ -f "$old/status" ] || [ -n "$(find "$old" -maxdepth 0 -mmin +120)" ]; then rm -rf -- "$old"; fi
done
console="$run/console.log"

# The guest's nvme disk: the caller's image (and an untouched copy the guest can
# compare with), or a fresh, small ext4 disk. For ext4, initialize the inode
# tables and journal now, so the guest kernel does not start writing in the background.
nvme_drive="file=$run/nvme.img,if=none,id=nvm,format=raw"
if [ -n "$nvme_null" ]; then
  [ -z "$nvme_image" ] || die "--nvme-image and --nvme-null exclude each other"
  nvme_drive="file=null-co://,file.read-zeroes=on,if=none,id=nvm,format=raw"
elif [ -n "$nvme_image" ]; then
  [ -f "$nvme_image" ] || die "--nvme-image: no file $nvme_image"
  size=$(stat -c %s "$nvme_image")
  { [ "$size" -gt 0 ] && [ $((size % 512)) -eq 0 ]; } || die "--nvme-image: $nvme_image is $size bytes, not a multiple of 512"
  cp "$nvme_image" "$run/nvme.img" && cp "$nvme_image" "$run/nvme-image" && chmod a-w "$run/nvme-image" \
    || die "cannot copy $nvme_image into $run"
else
  mkfs=$(PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4) || die "mkfs.ext4 not found (apt-get install e2fsprogs)"
  truncate -s 64M "$run/nvme.img"
  "$mkfs" -q -F -L vfiokit -E lazy_itable_init=0,lazy_journal_init=0 "$run/nvme.img" \
    || die "mkfs.ext4 failed for $run/nvme.img"
fi

# The command for the guest init, quoted for POSIX sh (single quotes; ' as '\'').
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
# The guest mounts its own tmpfs on /tmp, /run and /dev/shm, which hides the
# host's files there. A working tree (or current directory) under one of them is
# exported into the guest through a 9p share of its own, read-only like the
# root, and mounted at the same path: a clone in /tmp works as anywhere else.
hidden() { case "$1" in /tmp|/tmp/*|/run|/run/*|/dev/shm|/dev/shm/*) return 0 ;; esac; return 1; }
exports=()
add_export() {
  local d=$1 e
  for e in ${exports[@]+"${exports[@]}"}; do case "$d/" in "$e"/*) return ;; esac; done
  [[ "$d" != *[[:space:],]* ]] || die "$d is hidden in the guest (its own tmpfs) and cannot be exported: its path contains a space or comma"
  exports+=("$d")
}
cwd=$(pwd -P)
if hidden "$repo"; then add_export "$repo"; fi
if hidden "$cwd"; then add_export "$cwd"; fi
{
  echo "VFIOKIT_RUN=$(q "$run")"
  echo "VFIOKIT_IOMMU=$(q "$iommu")"
  echo "VFIOKIT_CWD=$(q "$cwd")"
  # Mount tags and paths of the extra exports (paths have no spaces: checked above).
  printf 'VFIOKIT_EXPORTS='\''%s'\''\n' "$(i=0; for e in ${exports[@]+"${exports[@]}"}; do printf 'tree%d %s ' "$i" "$e"; i=$((i + 1)); done)"
  # Exported here, so the guest init passes it on unchanged.
  [ -z "$nvme_image" ] || echo "export VFIOKIT_NVME_IMAGE=$(q "$run/nvme-image")"
  printf 'set --'; for a in "$@"; do printf ' %s' "$(q "$a")"; done; echo
} >"$run/command"
export_args=()
i=0
for e in ${exports[@]+"${exports[@]}"}; do
  export_args+=(-fsdev "local,id=tree$i,path=$e,security_model=none,readonly=on,multidevs=remap"
                -device "virtio-9p-pci,fsdev=tree$i,mount_tag=tree$i,bus=pcie.0,addr=0x$((19 + i))")
  i=$((i + 1))
done
[ -z "$verbose" ] || [ ${#exports[@]} -eq 0 ] || say "exported into the guest (hidden by its tmpfs): ${exports[*]}"

# --- QEMU
append="console=ttyS0 panic=-1 root=host rootfstype=9p ro"
# cache=loose: the guest caches the read-only root and does not revalidate. Every
# program start costs dozens of 9p round trips otherwise; this halves boot time
# on a busy host. The guest starts with an empty cache, so it sees the host's
# files as they are at first use; the results export stays uncached.
append+=" rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose"
append+=" init=$init hugepages=16 printk.time=1"
# Under TCG (and always with QEMU 7.2's AMD-Vi) the kernel's IO-APIC timer check
# can fail through interrupt remapping and panic: skip it, as VM kernels do.
append+=" no_timer_check"
iommu_args=()
case "$iommu" in
  # The IOMMU must come before the PCI devices on the command line.
  intel)  iommu_args=(-device intel-iommu,intremap=on); append+=" intel_iommu=on" ;;
  # amd-iommu takes the first free PCI slot itself (00:01.0): keep that slot free.
  # QEMU 7.2's AMD-Vi: the kernel's DMA-API mappings through it time out (nvme
  # never comes up), hence identity default domains. VFIO's domains are still
  # translated.
  amd)    iommu_args=(-device amd-iommu); append+=" iommu.passthrough=1" ;;
  # No interrupt remapping: VFIO refuses MSI unless told it is acceptable.
  virtio) iommu_args=(-device virtio-iommu-pci,bus=pcie.0,addr=0x2)
          append+=" iommufd.allow_unsafe_interrupts=1 vfio_iommu_type1.allow_unsafe_interrupts=1" ;;
esac

# The edu pair that shares one IOMMU group: behind a PCIe-to-PCI bridge (group =
# bridge + both). Not with virtio-iommu: Linux probes an endpoint by its own
# requester ID, QEMU 7.2 knows devices behind such a bridge only by the alias
# (bus 1, devfn 0), the probe fails and the guest drops every IOMMU group. There,
# the pair is two functions of one multifunction slot instead (no ACS: one group).
if [ "$iommu" = virtio ]; then
  pair_args=(-device edu,bus=pcie.0,addr=0x6.0,multifunction=on -device edu,bus=pcie.0,addr=0x6.1)
else
  pair_args=(-device pcie-pci-bridge,id=br,bus=pcie.0,addr=0x4
             -device edu,bus=br,addr=0x1 -device edu,bus=br,addr=0x2)
fi

# An SR-IOV physical function (QEMU 10.0; QEMU 7.2's nvme VFs never come back from an FLR): QEMU's nvme in an
# nvme-subsys offers VFs; its VFs need bus numbers after the PF's, so it sits
# behind a root port (on pcie.0 the VF addresses would overflow the slot).
# vfio-pci creates VFs only with enable_sriov.
sriov_args=()
if [ -n "$sriov_pf" ]; then
  sriov_args=(-device pcie-root-port,id=sriovrp,bus=pcie.0,addr=0x8,chassis=8
              -device nvme-subsys,id=sriovsubsys
              -device nvme,serial=vfiokit-sriov,subsys=sriovsubsys,bus=sriovrp,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2,max_ioqpairs=6,msix_qsize=4)
  append+=" vfio_pci.enable_sriov=1"
fi

cpu_args=()
if [ -n "$hugepage_1g" ]; then
  # After hugepages=16 (the default size, 2 MiB): one page of 1 GiB, which needs pdpe1gb.
  append+=" hugepagesz=1G hugepages=1"
  cpu_args=(-cpu max)
fi

[ -z "$extra_append" ] || append+=" $extra_append"

# The command's stdout/stderr reach QEMU as fd sets (-add-fd). Each goes through
# its own pipe and cat: QEMU needs write-only descriptors (a terminal's are
# read-write) and must not share a file offset or flags with the caller's stdout.
exec {out_fd}> >(cat) ; out_pid=$!
exec {err_fd}> >(cat >&2) ; err_pid=$!

if [ -z "${qemu_bin:-}" ]; then
  qemu_bin=${VFIOKIT_QEMU:-qemu-system-x86_64}
  amd_qemu="${VFIOKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfiokit}/qemu-7.2/root/usr/bin/qemu-system-x86_64"
  if [ "$iommu" = amd ] && [ -z "${VFIOKIT_QEMU:-}" ] && [ -x "$amd_qemu" ]; then qemu_bin=$amd_qemu; fi
fi
# A QEMU unpacked outside /usr (the cached 7.2) loads its accelerator modules
# from beside itself.
modules="$(dirname "$qemu_bin")/../lib/x86_64-linux-gnu/qemu"
qemu_data=()
if [ -d "$modules" ] && [ "$(dirname "$qemu_bin")" != /usr/bin ]; then
  export QEMU_MODULE_DIR=$modules
  qemu_data=(-L "$(dirname "$qemu_bin")/../share/qemu" -L /usr/share/seabios -L /usr/lib/ipxe/qemu)
fi
qemu=("$qemu_bin" "${qemu_data[@]}" -name vfiokit-test -no-user-config -nodefaults -no-reboot -display none
  -accel "tcg,thread=$tcg_thread" -M q35 -m "$memory" -smp 2 ${cpu_args[@]+"${cpu_args[@]}"}
  -kernel "$kernel" -append "$append"
  -serial "file:$console"
  "${iommu_args[@]}"
  -device edu,bus=pcie.0,addr=0x3
  "${pair_args[@]}"
  -drive "$nvme_drive"
  -device nvme,serial=vfiokit0,drive=nvm,bus=pcie.0,addr=0x5
  ${sriov_args[@]+"${sriov_args[@]}"}
  -add-fd "fd=$out_fd,set=1" -add-fd "fd=$err_fd,set=2"
  -chardev file,id=gout,path=/dev/fdset/1,append=on
  -chardev file,id=gerr,path=/dev/fdset/2,append=on
  -device virtio-serial-pci,id=vser,bus=pcie.0,addr=0x10
  -device virtserialport,bus=vser.0,chardev=gout,name=vfiokit.stdout
  -device virtserialport,bus=vser.0,chardev=gerr,name=vfiokit.stderr
  -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=root,mount_tag=host,bus=pcie.0,addr=0x11
  -fsdev "local,id=res,path=$run,security_model=none,multidevs=remap"
  -device virtio-9p-pci,fsdev=res,mount_tag=vfiokit,bus=pcie.0,addr=0x12
  ${export_args[@]+"${export_args[@]}"}
  ${extra_qemu[@]+"${extra_qemu[@]}"}
)
[ -z "$verbose" ] || { say "run directory: $run"; say "qemu: ${qemu[*]}"; }
printf '%q ' "${qemu[@]}" >"$run/qemu-command"; echo >>"$run/qemu-command"

# --foreground: Ctrl-C reaches QEMU. -k: QEMU gets a KILL if TERM does not end it.
# QEMU's own messages go to qemu.log and are shown below.
interrupted=
trap 'interrupted=1' INT TERM
set +e
timeout --foreground -k 10 "$timeout_secs" "${qemu[@]}" </dev/null 2>"$run/qemu.log"
qemu_status=$?
set -e
trap - INT TERM
# Let the relays drain before we report anything.
exec {out_fd}>&- {err_fd}>&-
wait "$out_pid" "$err_pid" 2>/dev/null || true

if [ -n "$interrupted" ]; then
  say "interrupted; console log: $console"
  exit 130
fi
# The guest writes the status file only after the command ended: if it is
# there, it is the answer, whatever happened to QEMU afterwards.
if [ -f "$run/status" ]; then
  status=$(cat "$run/status")
  [[ "$status" =~ ^[0-9]+$ ]] || die "bad exit status '$status' from the guest; console log: $console"
  exit "$status"
fi
if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
  say "timed out after ${timeout_secs}s; console log: $console"
  exit 124
fi
if [ -s "$run/qemu.log" ]; then
  sed 's/^/vm.sh: qemu: /' "$run/qemu.log" >&2
fi
if grep -q 'Kernel panic' "$console" 2>/dev/null; then
  say "the guest kernel panicked: $(grep -m1 'Kernel panic' "$console" | tr -d '\r')"
elif [ ! -s "$console" ]; then
  say "QEMU failed (exit status $qemu_status) before the guest printed anything"
else
  say "the guest ended without an exit status (QEMU exit status $qemu_status)"
fi
say "console log: $console"
exit 125
