#!/bin/bash
# bulkhead-cri in front of bulkheadd in the bed's dom0, driven through kubelet's sequence of CRI calls by
# `bulkhead-cri smoke-test`: the image pulled through CRI from a registry in dom0, a pod (a real zone) with
# its containers, CRI logs, exec, attach, port-forward, stats, a second pod reaching the first at its IP,
# stop, remove; then the RuntimeClass's overhead checked against what real pods cost (bulkhead-cri
# overhead-check).
set -euo pipefail
. /root/scenario-lib.sh
start_registry /root/registry-storage
start_daemon
image=127.0.0.1:5000/test/busybox:gzip
bulkhead image inspect "$image" >/dev/null 2>&1 && fail "the image is there before the CRI pull"

start_cri

if ! bulkhead-cri smoke-test --image "$image" --log-dir /var/log/pods; then
  echo "--- bulkhead-cri log" >&2
  tail -40 "$cri_log" >&2
  fail "the CRI smoke test failed"
fi
# Where the smoke pod's RunPodSandbox time went (figures for the record, not asserted).
grep -m1 'pod sandbox ready' "$cri_log" |
  sed 's/\x1b\[[0-9;]*m//g; s/^.*pod sandbox ready/figure: RunPodSandbox breakdown:/' || true
grep -m1 'zone domain running' "$daemon_log" |
  sed 's/\x1b\[[0-9;]*m//g; s/^.*zone domain running/figure: zone start breakdown:/' || true
bulkhead image inspect "$image" >/dev/null || fail "the CRI pull left no image"
# The RuntimeClass's overhead is honest: a pod with a memory limit and that overhead lets its containers use
# the whole limit and costs the node no more than limit + overhead.
overhead=$(sed -n 's/^ *memory: *"\{0,1\}\([0-9]*\)Mi"\{0,1\}$/\1/p' /root/runtimeclass.yaml)
[ -n "$overhead" ] || fail "no overhead.podFixed.memory in Mi in runtimeclass.yaml"
for limit in 64 512; do
  if ! bulkhead-cri overhead-check --image "$image" --overhead-mib "$overhead" --limit-mib "$limit"; then
    tail -20 "$cri_log" >&2
    fail "the RuntimeClass overhead ($overhead MiB) does not hold for a pod of $limit MiB"
  fi
done
# The smoke test and the overhead checks removed their pods: no domain, zone or workload is left.
[ -z "$(ours)" ] || fail "domains left behind: $(ours)"
[ "$(bulkhead zone list -o json | tr -d ' \n')" = "[]" ] || fail "zones left behind: $(bulkhead zone list)"
echo "scenario ok"
