#!/bin/bash
# First-boot configuration test, run on the node by `ci/image boot --cidata image/tests/cidata/user-data
# --run` (a NoCloud disk labelled CIDATA): bulkhead-cloud-config applied every directive of that user-data
# under /var (the OS is read-only), bulkheadd runs with the configuration it carried, which is checked by its
# effect (a zone launched with `--virt auto` boots: under TCG only PV guests boot, and `auto` means PV only
# because of that configuration), and running it again changes nothing (idempotent). Prints
# "cloud config ok".
set -Eeuo pipefail
fail() {
  echo "FAILED: $*" >&2
  journalctl --no-pager -b -u bulkhead-cloud-config -u bulkheadd -n 30 >&2 || true
  exit 1
}
trap 'rc=$?; [ $rc = 0 ] || echo "FAILED: line $LINENO: $BASH_COMMAND exited $rc" >&2' ERR

systemctl is-active --quiet bulkhead-cloud-config || fail "bulkhead-cloud-config is $(systemctl is-active bulkhead-cloud-config || true)"
journalctl --no-pager -b -u bulkhead-cloud-config -o cat | grep bulkhead-cloud-config: || true
grep -q '^applied [0-9a-f]\{16\} from NoCloud disk ' /run/bulkhead/cloud-config/status ||
  fail "status: $(cat /run/bulkhead/cloud-config/status 2>/dev/null || echo none)"
[ "$(hostname)" = bulkhead-cidata-test ] || fail "hostname is $(hostname)"
grep -q 'ci@bulkhead$' /var/lib/ssh/authorized_keys/root || fail "the SSH key is not in /var/lib/ssh/authorized_keys/root"
grep -q '^clusterDomain: cluster.local$' /var/lib/kubelet/config.yaml || fail "kubelet's config.yaml was not written"
grep -q 'server: "https://10.0.0.1:6443"' /var/lib/kubelet/bootstrap-kubeconfig || fail "kubelet's bootstrap kubeconfig was not written"
[ "$(stat -c %a /var/lib/kubelet/bootstrap-kubeconfig)" = 600 ] || fail "the bootstrap kubeconfig is not 0600"
grep -q 'auto-virt-mode = "pv"' /var/lib/bulkhead-config/bulkheadd.toml || fail "bulkheadd.toml was not written"
tr '\0' ' ' </proc/"$(systemctl show -P MainPID bulkheadd)"/cmdline | grep -q -- '--config /var/lib/bulkhead-config/bulkheadd.toml' ||
  fail "bulkheadd runs without the user-data's configuration: $(tr '\0' ' ' </proc/"$(systemctl show -P MainPID bulkheadd)"/cmdline)"
# The image's kubelet drop-ins are in place for a kubelet a profile adds.
grep -q '^containerRuntimeEndpoint: unix:///run/bulkhead/cri.sock$' /etc/kubernetes/kubelet.conf.d/10-bulkhead.conf ||
  fail "the KubeletConfiguration drop-in does not point at the CRI socket"
grep -q -- '--config-dir=/etc/kubernetes/kubelet.conf.d' /usr/lib/systemd/system/kubelet.service.d/10-bulkhead.conf ||
  fail "kubelet.service's drop-in does not pass --config-dir"

# The configuration's effect: --virt auto (no --virt) boots as PV.
out=$(bulkhead zone launch --image busybox:baked --name cfg --memory 64 --attach -- /bin/sh -c 'echo configured')
[ "$out" = configured ] || fail "a zone launched with the default virt mode printed [$out]"
bulkhead zone destroy cfg

# Idempotent: a second run applies the same and leaves the files as they are.
before=$(sha256sum /var/lib/kubelet/config.yaml /var/lib/bulkhead-config/bulkheadd.toml /var/lib/ssh/authorized_keys/root)
/usr/lib/bulkhead/cloud-config
after=$(sha256sum /var/lib/kubelet/config.yaml /var/lib/bulkhead-config/bulkheadd.toml /var/lib/ssh/authorized_keys/root)
[ "$before" = "$after" ] || fail "a second run changed the files"
[ "$(wc -l </var/lib/ssh/authorized_keys/root)" = 1 ] || fail "a second run duplicated the SSH key"

# Refused whole: user-data with an unknown directive fails the check with the line at fault.
printf '#bulkhead-config v1\nhostname other-name\nrunc sudo rm -rf /\n' >/tmp/bad-user-data
/usr/lib/bulkhead/cloud-config --check /var/lib/bulkhead-config/user-data.applied || fail "the applied user-data does not check"
if err=$(/usr/lib/bulkhead/cloud-config --check /tmp/bad-user-data 2>&1); then
  fail "bad user-data was accepted"
fi
grep -q 'line 3: unknown directive \[runc\]' <<<"$err" || fail "bad user-data: unexpected error [$err]"
[ "$(hostname)" = bulkhead-cidata-test ] || fail "the refused user-data changed the hostname"
echo "cloud config ok"
