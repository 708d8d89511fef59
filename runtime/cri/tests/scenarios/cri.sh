#!/bin/bash
# bulkhead-cri in front of bulkheadd in the bed's dom0, driven through kubelet's sequence of CRI calls by
# `bulkhead-cri smoke-test`: a pod (a real zone) with two containers, CRI logs, ExecSync, stop, remove.
set -euo pipefail
. /root/scenario-lib.sh
start_daemon
bulkhead image import /root/busybox-oci.tar --reference busybox:demo >/dev/null

cri_log=/tmp/bulkhead-cri.log
bulkhead-cri >"$cri_log" 2>&1 &
for _ in $(seq 100); do [ -S /run/bulkhead/cri.sock ] && break; sleep 0.1; done
[ -S /run/bulkhead/cri.sock ] || { cat "$cri_log" >&2; fail "bulkhead-cri did not listen"; }

if ! bulkhead-cri smoke-test --image busybox:demo --log-dir /var/log/pods; then
  echo "--- bulkhead-cri log" >&2
  tail -40 "$cri_log" >&2
  fail "the CRI smoke test failed"
fi
# The smoke test removed its pod: no domain, zone or workload is left.
[ -z "$(ours)" ] || fail "domains left behind: $(ours)"
[ "$(bulkhead zone list -o json | tr -d ' \n')" = "[]" ] || fail "zones left behind: $(bulkhead zone list)"
echo "scenario ok"
