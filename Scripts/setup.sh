#!/usr/bin/env bash
# Installs what VFIOKit's tests need on a Debian 12 machine and builds (or
# reuses) the guest kernel. Idempotent: a second run only checks.
#
#   Scripts/setup.sh          apt packages + test kernel
#
# Packages: QEMU (the guest), the kernel's build tools, e2fsprogs (the guest's
# nvme image), python3 (the ABI check), fio (the kernel's side of the NVMe
# benchmark; the guest runs the host's binaries). QEMU comes from bookworm-backports
# (10.x) when available: it accepts ready iommufd/VFIO fds (`-object
# iommufd,fd=N`), which `vfioctl attach --exec` hands to it. The machine's own
# apt sources are not changed: backports is reached through a private list.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

need=(bc bison flex libelf-dev libssl-dev cpio xz-utils make gcc python3 e2fsprogs util-linux fio pciutils)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# QEMU: 10.x from bookworm-backports if we can, else Debian 12's own 7.2.
qemu_version() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p'; }
if [ "$(qemu_version || true)" = "" ] || [ "$(qemu_version)" -lt 9 ]; then
  cache=${VFIOKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfiokit}
  apt_dir="$cache/apt-backports"
  mkdir -p "$apt_dir/lists/partial"
  mirror=$(grep -hsE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$mirror" ] || mirror=$(grep -hsE '^\s*deb\s' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
  security=$(grep -hsE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep security | head -n1 || true)
  {
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-updates main"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main"
    [ -z "$security" ] || echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $security bookworm-security main"
  } > "$apt_dir/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists")
  say "installing qemu-system-x86 from bookworm-backports"
  if $sudo apt-get "${opts[@]}" update -qq >/dev/null 2>&1 &&
     $sudo apt-get "${opts[@]}" install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null 2>&1; then
    say "QEMU $(qemu-system-x86_64 --version | head -n1)"
  else
    say "warning: bookworm-backports QEMU not available; using Debian 12's QEMU"
    dpkg -s qemu-system-x86 >/dev/null 2>&1 || { $sudo apt-get update -qq; $sudo apt-get install -y -qq qemu-system-x86 >/dev/null; }
  fi
fi

# AMD-Vi guests run on Debian 12's own QEMU 7.2: QEMU 10.0's amd-iommu does not
# translate emulated devices' DMA (edu's writes land untranslated). The three
# packages are unpacked into the cache, not installed; Scripts/vm.sh --iommu amd
# picks that binary up.
cache=${VFIOKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfiokit}
q72="$cache/qemu-7.2"
if [ ! -x "$q72/root/usr/bin/qemu-system-x86_64" ] || [ ! -f "$q72/root/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so" ]; then
  say "unpacking Debian 12's QEMU 7.2 for AMD-Vi guests into $q72"
  rm -rf "$q72"; mkdir -p "$q72"
  for p in qemu-system-x86 qemu-system-common qemu-system-data; do
    v=$(apt-cache madison "$p" | awk '{print $3}' | grep -E '^1:7\.2' | sort -V | tail -n1)
    [ -n "$v" ] || { $sudo apt-get update -qq; v=$(apt-cache madison "$p" | awk '{print $3}' | grep -E '^1:7\.2' | sort -V | tail -n1); }
    [ -n "$v" ] || { say "error: no QEMU 7.2 $p in Debian 12's suites"; exit 1; }
    (cd "$q72" && apt-get download "$p=$v" >/dev/null 2>&1) || { say "error: apt-get download $p=$v failed"; exit 1; }
  done
  for d in "$q72"/*.deb; do dpkg-deb -x "$d" "$q72/root"; done
  rm -f "$q72"/*.deb
  "$q72/root/usr/bin/qemu-system-x86_64" --version >/dev/null || { say "error: the unpacked QEMU 7.2 does not run"; exit 1; }
fi

"$here/test-kernel.sh" >/dev/null
say "ready: kernel $(cat "$("$here/test-kernel.sh" --print)/version"), $(qemu-system-x86_64 --version | head -n1)"
