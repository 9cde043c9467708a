#!/usr/bin/env bash
# Prepares the guest kernel of the `microvm` backend from Debian's own packages, with nothing
# downloaded from anywhere else: Debian's cloud kernel (linux-image-cloud-amd64, the one built
# for VMs) is fetched with apt-get download and unpacked into a directory, never installed on
# the host (no initramfs-tools, no boot loader hooks).
#
# The directory gets:
#   vmlinux            the kernel as an uncompressed ELF: QEMU's microvm boots it through its
#                      PVH entry point, without firmware (the bzImage would need a BIOS)
#   modules/NN-x.ko    the modules the guest needs (virtio, virtio-mmio, the serial ports, the
#                      disk, erofs), numbered in dependency order; airlock-init loads them
#   config             the kernel's build configuration
#   VERSION            the Debian package and version they came from
# The same package version gives the same files. Idempotent: with a kernel in place it does
# nothing and prints nothing (delete the directory to take a newer Debian kernel).
#
# Usage: scripts/guest-kernel.sh [DIR]
#   DIR defaults to $AIRLOCK_GUEST_KERNEL_DIR, else /var/lib/airlock/guest-kernel as root,
#   else ~/.cache/airlock/guest-kernel: where the control plane and the tests look.
set -euo pipefail
export LC_ALL=C

if [ "$(id -u)" -eq 0 ]; then default=/var/lib/airlock/guest-kernel; else
  default="${XDG_CACHE_HOME:-$HOME/.cache}/airlock/guest-kernel"; fi
dir="${1:-${AIRLOCK_GUEST_KERNEL_DIR:-$default}}"
[ -s "$dir/vmlinux" ] && [ -s "$dir/config" ] && [ -s "$dir/VERSION" ] && exit 0

die() { echo "guest-kernel: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg-deb lz4; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs lz4)"
done
package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$package" ] || die "apt knows no linux-image-cloud-amd64 (is the Debian archive in sources.list?)"
echo "guest-kernel: fetching $package from Debian into $dir" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$package" 2>/dev/null) || die "apt-get download $package failed"
dpkg-deb -x "$work"/"$package"_*.deb "$work/root"
release=${package#linux-image-}
vmlinuz="$work/root/boot/vmlinuz-$release"
[ -f "$vmlinuz" ] || die "$package holds no /boot/vmlinuz-$release"

# The bzImage wraps an LZ4-compressed vmlinux (CONFIG_KERNEL_LZ4): find LZ4's legacy frame
# magic (02 21 4c 18) and decompress from there; lz4 stops at the end of the frame.
offset=$(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -n1 | cut -d: -f1)
[ -n "$offset" ] || die "no LZ4 payload in $vmlinuz (did Debian change the kernel's compression?)"
tail -c +"$((offset + 1))" "$vmlinuz" | lz4 -dc > "$work/vmlinux" 2>/dev/null || true
head -c 4 "$work/vmlinux" | grep -q ELF || die "the payload of $vmlinuz is not an ELF kernel"

mkdir -p "$work/out/modules"
mv "$work/vmlinux" "$work/out/vmlinux"
# The kernel's build configuration: the backend reads CONFIG_HZ from it (boot arguments).
cp "$work/root/boot/config-$release" "$work/out/config"
kernel="$work/root/lib/modules/$release/kernel"
n=10
for module in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
  drivers/char/virtio_console drivers/block/virtio_blk lib/libcrc32c fs/erofs/erofs; do
  [ -f "$kernel/$module.ko" ] || die "$package has no $module.ko"
  cp "$kernel/$module.ko" "$work/out/modules/$n-$(basename "$module").ko"
  n=$((n + 1))
done
dpkg-deb -f "$work"/"$package"_*.deb Package Version | tr '\n' ' ' > "$work/out/VERSION"
echo >> "$work/out/VERSION"

mkdir -p "$(dirname "$dir")"
rm -rf "$dir.new"
mv "$work/out" "$dir.new"
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "guest-kernel: $(cat "$dir/VERSION") ready in $dir" >&2
