# Builds the cached test-bed base: Xen, the dom0 kernel and a Debian 12 dom0 root as a cpio archive.
# Sourced by ci/testbed; the result's directory name carries a hash of this file and the package list, so
# editing either rebuilds it. Output directory: xen (multiboot ELF), vmlinuz (dom0 kernel), base.cpio.
# shellcheck shell=bash

DOM0_MIRROR=${DOM0_MIRROR:-http://deb.debian.org/debian}

dom0_base_dir() {
  local h
  h=$(content_hash "$REPO_ROOT/ci/lib/dom0-base.sh" "$REPO_ROOT/ci/testbed.d/dom0-packages")
  echo "$BULKHEAD_CACHE/testbed/dom0-base-$h"
}

# Module trees dom0 needs (Xen backends, virtio for the test bed's own devices, storage, filesystems and
# networking for the runtime); everything else (GPUs, wireless, sound, ...) is dropped to keep the cpio small.
dom0_keep_modules=(
  kernel/drivers/xen kernel/drivers/block kernel/drivers/net kernel/drivers/virtio kernel/drivers/char
  kernel/drivers/md kernel/fs kernel/net kernel/lib kernel/crypto kernel/arch
)

# ...and within those, hardware and protocols a virtual node never meets.
dom0_drop_modules=(
  drivers/net/ethernet drivers/net/wireless drivers/net/usb drivers/net/can drivers/net/wwan drivers/net/ieee802154
  drivers/net/hamradio drivers/net/fddi drivers/net/plip drivers/net/arcnet drivers/net/appletalk drivers/net/dsa
  drivers/net/phy drivers/net/mdio drivers/net/pcs drivers/net/hyperv drivers/net/thunderbolt drivers/net/ppp
  drivers/net/slip drivers/block/drbd drivers/block/rnbd drivers/block/mtip32xx drivers/char/ipmi drivers/char/tpm
  drivers/char/hw_random drivers/md/bcache net/bluetooth net/mac80211 net/wireless net/nfc net/ieee802154 net/6lowpan
  net/can net/atm net/sunrpc net/ceph net/rxrpc net/mpls net/batman-adv net/appletalk net/x25 net/rds net/tipc
  net/sctp net/dccp net/l2tp net/9p net/ax25 net/rose net/netrom net/mac802154 net/qrtr net/smc net/lapb
  fs/ocfs2 fs/xfs fs/btrfs fs/nfs fs/nfsd fs/nfs_common fs/lockd fs/smb fs/cifs fs/gfs2 fs/jfs fs/reiserfs fs/ceph
  fs/ntfs3 fs/f2fs fs/nilfs2 fs/hfs fs/hfsplus fs/ubifs fs/udf fs/orangefs fs/afs fs/coda fs/dlm fs/ufs fs/9p
)

ensure_dom0_base() {
  local out
  out=$(dom0_base_dir)
  if [ -f "$out/base.cpio" ]; then echo "$out"; return 0; fi
  mkdir -p "$BULKHEAD_CACHE/testbed" "$BULKHEAD_CACHE/debootstrap-debs"
  # One builder at a time; a second run waits and then finds the result.
  (
    flock 8
    [ -f "$out/base.cpio" ] || build_dom0_base "$out"
  ) 8>"$BULKHEAD_CACHE/testbed/.lock" >&2 || return 1
  echo "$out"
}

build_dom0_base() {
  local out=$1 tmp root
  log "testbed: building the dom0 base (cold cache, a few minutes) into $out"
  # Leftovers of an interrupted build (we hold the lock, so none is in progress). An interrupted debootstrap
  # can leave proc/sys mounted inside: unmount before deleting.
  findmnt -rn -o TARGET | grep -F "$BULKHEAD_CACHE/testbed/.build." | sort -r | xargs -r -n1 umount -l
  rm -rf "$BULKHEAD_CACHE"/testbed/.build.*
  tmp=$(mktemp -d "$BULKHEAD_CACHE/testbed/.build.XXXXXX")
  root=$tmp/root
  # debootstrap keeps its downloads in the cache so a rebuild after a package-list edit is quicker.
  debootstrap --variant=minbase --cache-dir="$BULKHEAD_CACHE/debootstrap-debs" bookworm "$root" "$DOM0_MIRROR" \
    >"$tmp/debootstrap.log" 2>&1 || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log: $tmp/debootstrap.log)"; }
  cat >"$root/etc/apt/sources.list" <<SRC
deb $DOM0_MIRROR bookworm main
deb $DOM0_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
  # No initramfs for the dom0 kernel: the whole root is the initramfs.
  mkdir -p "$root/etc/initramfs-tools"
  printf 'update_initramfs=no\n' >"$root/etc/initramfs-tools/update-initramfs.conf"
  local pkgs
  mapfile -t pkgs < <(grep -v -e '^#' -e '^$' "$REPO_ROOT/ci/testbed.d/dom0-packages")
  chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get -y -qq upgrade && apt-get install -y -qq -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef --no-install-recommends ${pkgs[*]}" \
    >"$tmp/apt.log" 2>&1 || { tail -20 "$tmp/apt.log" >&2; die "installing dom0 packages failed (log: $tmp/apt.log)"; }
  local kver
  kver=$(basename "$(ls -d "$root"/lib/modules/* | head -1)")
  # QEMU's multiboot loader needs the uncompressed ELF.
  gunzip -c "$root"/boot/xen-4.17-amd64.gz >"$tmp/xen"
  cp "$root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
  # Keep only the module trees dom0 uses, then rebuild the module index.
  local m keep
  keep=$tmp/modules-keep; mkdir -p "$keep"
  for m in "${dom0_keep_modules[@]}"; do
    [ -d "$root/lib/modules/$kver/$m" ] || continue
    mkdir -p "$keep/$(dirname "$m")"; mv "$root/lib/modules/$kver/$m" "$keep/$m"
  done
  rm -rf "$root/lib/modules/$kver/kernel"; mv "$keep/kernel" "$root/lib/modules/$kver/kernel"
  for m in "${dom0_drop_modules[@]}"; do rm -rf "$root/lib/modules/$kver/kernel/$m"; done
  chroot "$root" depmod "$kver"
  rm -rf "$root"/usr/share/{doc,man,info,locale,bug,lintian} "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/boot/xen* "$root"/boot/initrd* "$root"/lib/firmware "$root"/var/log/*.log \
    "$root"/usr/lib/udev/hwdb.*
  # dom0's root is a tmpfs of half its memory: drop what no scenario runs. Of the CNI plugins (44 MB) the
  # scenarios' pod network uses bridge, host-local and loopback; Python (33 MB) is only pygrub's, and zones
  # boot a kernel given by path.
  find "$root/usr/lib/cni" -type f ! -name bridge ! -name host-local ! -name loopback -delete
  rm -rf "$root"/usr/lib/python3* "$root"/usr/bin/python3*
  # Scenarios boot the dom0 kernel as a PV guest too; keep it at a stable path.
  mv "$root/boot/vmlinuz-$kver" "$root/boot/vmlinuz"
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$tmp/base.cpio"
  rm -rf "$root" "$keep"
  mkdir -p "$(dirname "$out")"; rm -rf "$out"; mv "$tmp" "$out"
  log "testbed: dom0 base ready ($(du -sh "$out/base.cpio" | cut -f1) cpio)"
}
