#!/bin/bash
# An image pulled from a registry in dom0 runs in a zone: Debian's docker-registry on dom0's loopback serves
# the storage the test pushed the busybox image to on the host (added as /root/registry-storage); bulkheadd
# pulls it over plain HTTP (configured insecure), a zone runs it, and nothing is left after the destroy.
# Prints "scenario ok" at the end.
set -Eeuo pipefail

. /root/scenario-lib.sh
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

start_registry /root/registry-storage
start_daemon
image=127.0.0.1:5000/test/busybox:gzip
t0=$(now)
bulkhead image pull "$image" || { tail -20 /tmp/registry.log >&2; fail "image pull"; }
echo "figure: image pull from dom0's registry (2 layers, pull + convert): $(since "$t0") s"
bulkhead image list

rc=0
out=$(bulkhead zone launch --image "$image" --name pulled --memory 48 --attach -- /bin/sh -c 'echo pulled-marker; exit 5') || rc=$?
[ "$out" = pulled-marker ] || fail "launch --attach printed [$out]"
[ "$rc" = 5 ] || fail "the workload's exit 5 gave $rc"
bulkhead zone destroy pulled
kill "$(cat /tmp/registry.pid)"

# Nothing left behind: no domain, loop device, zone or workload record.
nothing_left
echo "scenario ok"
