#!/usr/bin/env bash
# Builds (or reuses) the VFIOKit test-guest kernel: Debian's linux-source for the
# pinned line, tinyconfig + kvm_guest.config + Scripts/guest-kernel.config.
#
#   Scripts/test-kernel.sh            build if needed, print the bzImage path
#   Scripts/test-kernel.sh --print    print the cache directory (kernel, headers)
#
# The cache lives outside the clone: ${VFIOKIT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/vfiokit},
# keyed by kernel version and config hash, so a second run is instant.
# apt is driven with a private sources list and state directory; the machine's
# own apt configuration is never changed.
set -euo pipefail

KERNEL_LINE=${VFIOKIT_KERNEL_LINE:-7.2}   # the uapi version CVFIO binds
here=$(cd "$(dirname "$0")" && pwd)
cache=${VFIOKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfiokit}
fragment="$here/guest-kernel.config"
mode=${1:-build}

say() { printf '[test-kernel %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# --- private apt: Debian's newer suites, from the mirror this machine already uses
apt_dir="$cache/apt"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
mirror() {
  local uri
  uri=$(grep -hsE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hsE '^\s*deb\s' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt: cannot fetch linux-source"
  echo "$uri"
}
apt_update() {
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  local m; m=$(mirror)
  : > "$apt_dir/sources.list"
  for suite in unstable experimental testing trixie-backports; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $m $suite main" >> "$apt_dir/sources.list"
  done
  say "refreshing private apt lists (unstable, experimental, testing, trixie-backports)"
  apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 || { cat "$apt_dir/update.log" >&2; die "apt-get update failed"; }
}
# newest version of a package across the private suites
newest() { apt-cache "${apt_opts[@]}" madison "$1" 2>/dev/null | awk '{print $3}' | sort -V | tail -n1; }

# --- which source: pinned line, else newest 7.x (and say so)
pick_source() {
  local v pkg="linux-source-$KERNEL_LINE"
  v=$(newest "$pkg")
  if [ -z "$v" ]; then
    pkg=$(apt-cache "${apt_opts[@]}" pkgnames linux-source-7. 2>/dev/null | sort -V | tail -n1)
    [ -n "$pkg" ] || die "no linux-source-7.x package in Debian's suites"
    v=$(newest "$pkg")
    say "warning: linux-source-$KERNEL_LINE is no longer in Debian's suites; using $pkg $v instead"
  fi
  echo "$pkg $v"
}

confhash=$( (cat "$fragment"; echo "line=$KERNEL_LINE") | sha256sum | cut -c1-12)

# Reuse any finished build of this config whose version we already have, without
# touching the network (CI and offline reruns).
existing=$(ls -d "$cache"/kernel-*-"$confhash" 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$existing" ] && [ -f "$existing/bzImage" ] && [ -z "${VFIOKIT_KERNEL_REFRESH:-}" ]; then
  out=$existing
else
  apt_update
  read -r pkg ver < <(pick_source)
  out="$cache/kernel-$ver-$confhash"
fi

if [ ! -f "$out/bzImage" ]; then
  command -v make >/dev/null && command -v bc >/dev/null && command -v flex >/dev/null && command -v bison >/dev/null \
    || die "kernel build tools missing: apt-get install -y bc bison flex libelf-dev libssl-dev cpio make gcc xz-utils"
  src_root="$cache/src/$pkg-$ver"
  if [ ! -f "$src_root/.unpacked" ]; then
    say "downloading $pkg $ver"
    rm -rf "$src_root"; mkdir -p "$src_root"
    (cd "$src_root" && apt-get "${apt_opts[@]}" download "$pkg=$ver" >/dev/null) || die "apt-get download $pkg=$ver failed"
    dpkg-deb -x "$src_root"/*.deb "$src_root/deb"
    tarball=$(ls "$src_root"/deb/usr/src/linux-source-*.tar.* | head -n1)
    say "unpacking $(basename "$tarball")"
    tar -C "$src_root" -xf "$tarball"
    rm -rf "$src_root/deb" "$src_root"/*.deb
    touch "$src_root/.unpacked"
  fi
  src=$(ls -d "$src_root"/linux-source-*/ | head -n1)
  build="$cache/build-$ver-$confhash"
  mkdir -p "$build"
  say "configuring ($src -> $build)"
  make -s -C "$src" O="$build" tinyconfig >/dev/null
  KCONFIG_CONFIG="$build/.config" "$src/scripts/kconfig/merge_config.sh" -m -O "$build" \
      "$build/.config" "$src/kernel/configs/kvm_guest.config" "$fragment" >/dev/null
  make -s -C "$src" O="$build" olddefconfig >/dev/null
  missing=()
  while read -r line; do
    case "$line" in CONFIG_*=*) grep -qx "$line" "$build/.config" || missing+=("$line");; esac
  done < "$fragment"
  [ ${#missing[@]} -eq 0 ] || die "options not enabled after olddefconfig: ${missing[*]}"
  jobs=$(nproc)
  say "building bzImage with -j$jobs (about 10 minutes on 2 cores); log: $build/build.log"
  start=$(date +%s)
  ( while sleep 30; do
      n=$(grep -c '^  CC' "$build/build.log" 2>/dev/null || true)
      say "  ... $((($(date +%s) - start) / 60)) min, $n objects compiled"
    done ) &
  ticker=$!
  trap 'kill $ticker 2>/dev/null || true' EXIT
  if ! make -C "$src" O="$build" -j"$jobs" bzImage >"$build/build.log" 2>&1; then
    tail -n 40 "$build/build.log" >&2; die "kernel build failed; full log: $build/build.log"
  fi
  make -s -C "$src" O="$build" headers >>"$build/build.log" 2>&1 || die "make headers failed; see $build/build.log"
  kill $ticker 2>/dev/null || true
  mkdir -p "$out.tmp"
  cp "$build/arch/x86/boot/bzImage" "$out.tmp/bzImage"
  cp -r "$build/usr/include" "$out.tmp/include"
  # The mock-domain test ABI is not uapi: keep the kernel's copy beside the headers
  # so our Swift definitions can be checked against it.
  cp "$src/drivers/iommu/iommufd/iommufd_test.h" "$out.tmp/iommufd_test.h"
  cp "$build/.config" "$out.tmp/config"
  echo "$ver" > "$out.tmp/version"
  echo "$src" > "$out.tmp/source"
  rm -rf "$out"; mv "$out.tmp" "$out"
  say "built in $((($(date +%s) - start) / 60)) min"
fi

case "$mode" in
  --print) echo "$out" ;;
  *) echo "$out/bzImage" ;;
esac
