#!/bin/bash
# Node image boot test, run as root on the booted node by `ci/image boot --run` (BIOS and UEFI in CI): Xen's
# services and bulkheadd are up (bulkheadd as a Type=notify unit), the OS is read-only behind dm-verity with
# the root hash from the boot configuration, the state partition grew to fill the disk, the image baked into
# the node image was imported at boot, and a zone launched from it runs a workload whose output reaches the CLI.
# Prints figures (boot and launch times) and "image boot ok" at the end.
set -Eeuo pipefail
diag() {
  echo "--- systemctl --failed" >&2; systemctl --no-pager --failed >&2 || true
  echo "--- journal: bulkheadd, baked images" >&2
  journalctl --no-pager -b -u bulkheadd -u bulkhead-baked-images -n 40 >&2 || true
  xl list >&2 || true
  for c in /var/log/xen/console/guest-bulkhead-*.log; do
    if [ -f "$c" ]; then echo "--- $c" >&2; tail -15 "$c" >&2; fi
  done
}
fail() { echo "FAILED: $*" >&2; diag; exit 1; }
trap 'rc=$?; [ $rc = 0 ] || echo "FAILED: line $LINENO: $BASH_COMMAND exited $rc" >&2' ERR

echo "figure: node up (multi-user.target) after $(cut -d' ' -f1 /proc/uptime) s of dom0 uptime"
for u in xenstored xen-init-dom0 xenconsoled bulkheadd bulkhead-baked-images; do
  systemctl is-active --quiet "$u" || fail "$u is $(systemctl is-active "$u" || true)"
done
[ "$(systemctl show -P Type bulkheadd)" = notify ] || fail "bulkheadd is not a Type=notify unit"
xl info | grep -E '^(xen_version|total_memory|free_memory)' || fail "xl info"
# The OS is read-only behind dm-verity; state is on its own partition, grown to the end of the disk.
[ "$(findmnt -no SOURCE /)" = /dev/mapper/root ] || fail "/ is $(findmnt -no SOURCE /), not the verity device"
findmnt -no OPTIONS / | grep -qw ro || fail "/ is not mounted read-only"
touch /usr/.bulkhead-write-test 2>/dev/null && fail "wrote to the OS partition"
veritysetup status root | grep -E '^\s*(type|status|root hash|data device|hash device):' || fail "veritysetup status root"
veritysetup status root | grep -q 'status:.*verified' || fail "the verity device is not verified"
grep -qw "bulkhead.verity.roothash=$(veritysetup status root | sed -n 's/^ *root hash: *//p')" /proc/cmdline ||
  fail "the root hash in use is not the one the boot configuration gave"
[ "$(findmnt -no SOURCE /var)" = /dev/disk/by-partlabel/bulkhead-state ] || [ "$(findmnt -no SOURCE /var)" = "$(readlink -f /dev/disk/by-partlabel/bulkhead-state)" ] ||
  fail "/var is $(findmnt -no SOURCE /var), not the state partition"
state_mib=$(($(df -B1M --output=size /var | tail -1)))
echo "state: /var on $(findmnt -no SOURCE /var), ${state_mib} MiB (built as 512 MiB)"
[ "$state_mib" -gt 1024 ] || { journalctl --no-pager -b -u systemd-repart -u 'systemd-growfs@*' >&2; fail "the state partition did not grow"; }
[ -w /var/lib/bulkhead ] || fail "/var/lib/bulkhead is not writable"
bulkhead image inspect busybox:baked >/dev/null || fail "the baked image busybox:baked was not imported"
bulkhead check postinstall && json=$(bulkhead check postinstall -o json) && grep -q '"ok": true' <<<"$json" || fail "bulkhead check postinstall: the node is not ready (see its table above)"

# PV: under QEMU's TCG Xen reports HVM + HAP but PVH guests do not boot (on hardware, leave --virt auto).
t0=$(date +%s.%N)
out=$(bulkhead zone launch --image busybox:baked --name marker --memory 64 --virt pv --attach -- /bin/sh -c 'echo marker')
echo "figure: zone launch to workload exit (--attach): $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
[ "$out" = marker ] || fail "the zone printed [$out], not [marker]"
bulkhead zone destroy marker
echo "image boot ok"
