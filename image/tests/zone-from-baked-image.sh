#!/bin/bash
# Node image boot test, run as root on the booted node by `ci/image boot --run` (BIOS and UEFI in CI): Xen's
# services and bulkheadd are up (bulkheadd as a Type=notify unit), the image baked into the node image was
# imported at boot, and a zone launched from it runs a workload whose output reaches the CLI.
# Prints figures (boot and launch times) and "image boot ok" at the end.
set -Eeuo pipefail
diag() {
  echo "--- systemctl --failed" >&2; systemctl --no-pager --failed >&2 || true
  echo "--- journal: bulkheadd, baked images" >&2
  journalctl --no-pager -b -u bulkheadd -u bulkhead-baked-images -n 40 >&2 || true
  xl list >&2 || true
  for c in /var/log/xen/console/guest-bulkhead-*.log; do [ -f "$c" ] && { echo "--- $c" >&2; tail -15 "$c" >&2; }; done
}
fail() { echo "FAILED: $*" >&2; diag; exit 1; }
trap 'rc=$?; [ $rc = 0 ] || echo "FAILED: line $LINENO: $BASH_COMMAND exited $rc" >&2' ERR

echo "figure: node up (multi-user.target) after $(cut -d' ' -f1 /proc/uptime) s of dom0 uptime"
for u in xenstored xen-init-dom0 xenconsoled bulkheadd bulkhead-baked-images; do
  systemctl is-active --quiet "$u" || fail "$u is $(systemctl is-active "$u")"
done
[ "$(systemctl show -P Type bulkheadd)" = notify ] || fail "bulkheadd is not a Type=notify unit"
xl info | grep -E '^(xen_version|total_memory|free_memory)' || fail "xl info"
[ -w /var/lib/bulkhead ] || fail "/var/lib/bulkhead is not writable"
bulkhead image inspect busybox:baked >/dev/null || fail "the baked image busybox:baked was not imported"

# PV: under QEMU's TCG Xen reports HVM + HAP but PVH guests do not boot (on hardware, leave --virt auto).
t0=$(date +%s.%N)
out=$(bulkhead zone launch --image busybox:baked --name marker --memory 64 --virt pv --attach -- /bin/sh -c 'echo marker')
echo "figure: zone launch to workload exit (--attach): $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
[ "$out" = marker ] || fail "the zone printed [$out], not [marker]"
bulkhead zone destroy marker
echo "image boot ok"
