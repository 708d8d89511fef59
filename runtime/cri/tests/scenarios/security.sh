#!/bin/bash
# Kubelet's container security settings applied inside a real zone: `bulkhead-cri security-check` runs one
# container per setting (capabilities, no_new_privs, RuntimeDefault and Localhost seccomp, masked and
# read-only paths, privileged) and checks each from the container's own process and from an exec into it.
set -euo pipefail
. /root/scenario-lib.sh
start_daemon
bulkhead image import /root/busybox-oci.tar --reference busybox:demo >/dev/null

start_cri

if ! bulkhead-cri security-check --image busybox:demo --work-dir /var/lib/bulkhead-cri/security-check; then
  echo "--- bulkhead-cri log" >&2
  tail -40 "$cri_log" >&2
  fail "the security check failed"
fi
[ -z "$(ours)" ] || fail "domains left behind: $(ours)"
echo "scenario ok"
