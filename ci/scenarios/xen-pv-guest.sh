#!/bin/bash
# Proves the test bed: Xen answers in dom0, and PV guests — dom0's Debian kernel, then the zone kernel, each with a
# tiny busybox initramfs — boot and print a marker that only this run knows. Prints one "pv guest ok" line each.
set -euo pipefail

xl info >/tmp/xl-info
grep -E '^(xen_version|total_memory|free_memory|virt_caps)' /tmp/xl-info
grep -q '^xen_version *: 4\.17' /tmp/xl-info || { echo "xl info shows no Xen 4.17" >&2; exit 1; }

marker=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
guest=/tmp/pv-guest
mkdir -p "$guest/bin" "$guest/proc"
cp /bin/busybox "$guest/bin/busybox"
cat >"$guest/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
m=$(/bin/busybox sed -n 's/.*bulkhead\.marker=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "PV-GUEST-MARKER $m"
/bin/busybox poweroff -f
INIT
chmod +x "$guest/init"
(cd "$guest" && find . | cpio -o -H newc --quiet) >/tmp/pv-guest.cpio

# boot_guest KERNEL LABEL: boots KERNEL with the tiny initramfs and checks the marker.
boot_guest() {
  local kernel=$1 label=$2 start end
  cat >/tmp/pv-guest.cfg <<CFG
name = "testbed-pv-guest"
type = "pv"
kernel = "$kernel"
ramdisk = "/tmp/pv-guest.cpio"
extra = "console=hvc0 quiet bulkhead.marker=$marker"
memory = 128
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
CFG
  start=$(date +%s.%N)
  timeout 180 xl create -c /tmp/pv-guest.cfg >/tmp/pv-guest.console 2>&1 || true
  end=$(date +%s.%N)
  if ! grep -q "PV-GUEST-MARKER $marker" /tmp/pv-guest.console; then
    echo "the PV guest with the $label kernel did not print its marker; its console:" >&2
    tail -40 /tmp/pv-guest.console >&2
    exit 1
  fi
  if xl list | grep -q testbed-pv-guest; then
    echo "the PV guest ($label kernel) is still listed after powering off" >&2
    exit 1
  fi
  echo "pv guest ok: $label kernel, create to poweroff $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')s"
}

# Debian's own kernel (a generic PV-capable bzImage), then the zone kernel installed as a node has it.
boot_guest /boot/vmlinuz debian
boot_guest /usr/lib/bulkhead/zone/kernel zone
