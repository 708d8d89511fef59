#!/bin/bash
# Node image boot test, run as root on the booted node by `ci/image boot --run` (BIOS, UEFI and PXE in CI): Xen's
# services, bulkheadd and bulkhead-cri are up (both Type=notify units), the OS is read-only behind dm-verity
# with the root hash from the boot configuration, the state partition grew to fill the disk, the image baked
# into the node image was imported at boot, a zone launched from it runs a workload whose output reaches the
# CLI, and kubelet's sequence of CRI calls (bulkhead-cri smoke-test) runs a pod on the CRI socket.
# Booted from the PXE bundle (bulkhead.boot=pxe on dom0's command line) the OS is the initramfs in RAM: the
# disk checks (verity, state partition) do not apply and are replaced by checks of the RAM root.
# Prints figures (boot and launch times) and "image boot ok" at the end.
set -Eeuo pipefail
diag() {
  echo "--- systemctl --failed" >&2; systemctl --no-pager --failed >&2 || true
  echo "--- journal: bulkheadd, baked images" >&2
  journalctl --no-pager -b -u bulkheadd -u bulkhead-cri -u bulkhead-baked-images -n 40 >&2 || true
  xl list >&2 || true
  for c in /var/log/xen/console/guest-bulkhead-*.log; do
    if [ -f "$c" ]; then echo "--- $c" >&2; tail -15 "$c" >&2; fi
  done
}
fail() { echo "FAILED: $*" >&2; diag; exit 1; }
trap 'rc=$?; [ $rc = 0 ] || echo "FAILED: line $LINENO: $BASH_COMMAND exited $rc" >&2' ERR

echo "figure: node up (multi-user.target) after $(cut -d' ' -f1 /proc/uptime) s of dom0 uptime"
for u in xenstored xen-init-dom0 xenconsoled bulkheadd bulkhead-cri bulkhead-baked-images; do
  systemctl is-active --quiet "$u" || fail "$u is $(systemctl is-active "$u" || true)"
done
for u in bulkheadd bulkhead-cri; do
  [ "$(systemctl show -P Type "$u")" = notify ] || fail "$u is not a Type=notify unit"
done
[ -S /run/bulkhead/cri.sock ] || fail "bulkhead-cri is active but /run/bulkhead/cri.sock is not a socket"
xl info | grep -E '^(xen_version|total_memory|free_memory)' || fail "xl info"
if grep -qw bulkhead.boot=pxe /proc/cmdline; then
  # PXE: the whole OS came as dom0's initramfs and lives in RAM; /var too unless a local disk carries it.
  echo "boot: PXE (root $(findmnt -no FSTYPE /), $(df -h --output=size / | tail -1 | tr -d ' ') of RAM; /var on $(findmnt -no SOURCE --target /var))"
  case "$(findmnt -no FSTYPE /)" in rootfs | tmpfs | ramfs) ;; *) fail "booted by PXE but / is $(findmnt -no FSTYPE /)" ;; esac
  veritysetup status root >/dev/null 2>&1 && fail "booted by PXE but a verity device is open"
else
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
fi
[ -w /var/lib/bulkhead ] || fail "/var/lib/bulkhead is not writable"
bulkhead image inspect busybox:baked >/dev/null || fail "the baked image busybox:baked was not imported"
bulkhead check postinstall && json=$(bulkhead check postinstall -o json) && grep -q '"ok": true' <<<"$json" || fail "bulkhead check postinstall: the node is not ready (see its table above)"

# PV: under QEMU's TCG Xen reports HVM + HAP but PVH guests do not boot (on hardware, leave --virt auto).
t0=$(date +%s.%N)
out=$(bulkhead zone launch --image busybox:baked --name marker --memory 64 --virt pv --attach -- /bin/sh -c 'echo marker')
echo "figure: zone launch to workload exit (--attach): $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
[ "$out" = marker ] || fail "the zone printed [$out], not [marker]"
bulkhead zone destroy marker

# kubelet's sequence (version, pod sandbox, image status, containers, logs, exec, stop and remove) against the
# CRI socket the unit serves, with a real pod (a zone) from the baked image. Pods cannot ask for PV (CRI has no
# --virt), and under TCG Xen reports HVM + HAP but PVH guests do not boot: for this test only, bulkheadd is
# restarted with `auto` meaning PV (a runtime drop-in in /run; on hardware the default is right). Restarting
# bulkheadd restarts bulkhead-cri too (Requires=): both must come back ready.
mkdir -p /run/systemd/system/bulkheadd.service.d /run/bulkhead-test
printf '[zone]\nauto-virt-mode = "pv"\n' >/run/bulkhead-test/bulkheadd.toml
printf '[Service]\nEnvironment="BULKHEADD_ARGS=--config /run/bulkhead-test/bulkheadd.toml"\n' \
  >/run/systemd/system/bulkheadd.service.d/90-test-tcg.conf
cri_pid=$(systemctl show -P MainPID bulkhead-cri)
systemctl daemon-reload
systemctl restart bulkheadd || fail "restarting bulkheadd"
# The restart returns once bulkheadd is ready; bulkhead-cri's restart (same transaction) may still be
# activating: starting it waits for that job (bounded).
timeout 120 systemctl start bulkhead-cri || fail "bulkhead-cri did not come back after bulkheadd's restart"
for u in bulkheadd bulkhead-cri; do
  systemctl is-active --quiet "$u" || fail "$u is $(systemctl is-active "$u" || true) after restarting bulkheadd"
done
[ "$(systemctl show -P MainPID bulkhead-cri)" != "$cri_pid" ] || fail "bulkhead-cri was not restarted with bulkheadd"
# The pod network is the cluster's: a network add-on writes its CNI config into /etc/cni/net.d, which the
# read-only OS links to the state partition. Here a bridge stands in for it (the image's Debian plugins).
cat >/etc/cni/net.d/10-bulkhead-test.conflist <<'JSON' || fail "/etc/cni/net.d is not writable"
{"cniVersion":"1.0.0","name":"test-pods","plugins":[
 {"type":"bridge","bridge":"bhpods0","isGateway":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"loopback"}]}
JSON
t0=$(date +%s.%N)
timeout 900 bulkhead-cri smoke-test --image busybox:baked || fail "bulkhead-cri smoke-test against the unit's socket"
echo "figure: CRI smoke test: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
systemctl is-active --quiet bulkhead-cri || fail "bulkhead-cri is not active after the smoke test"
echo "image boot ok"
