#!/bin/bash
# Proves the test bed: Xen answers in dom0, and a PV guest (dom0's own kernel plus a tiny busybox initramfs)
# boots and prints a marker that only this run knows. Prints "pv guest ok <seconds>" on success.
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
echo o >/proc/sysrq-trigger
INIT
chmod +x "$guest/init"
(cd "$guest" && find . | cpio -o -H newc --quiet) >/tmp/pv-guest.cpio

cat >/tmp/pv-guest.cfg <<CFG
name = "testbed-pv-guest"
type = "pv"
kernel = "/boot/vmlinuz"
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
  echo "the PV guest did not print its marker; its console:" >&2
  tail -40 /tmp/pv-guest.console >&2
  exit 1
fi
if xl list | grep -q testbed-pv-guest; then
  echo "the PV guest is still listed after powering off" >&2
  exit 1
fi
echo "pv guest ok $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
