#!/bin/bash
# Five zones launched at once from one image, all run and are destroyed, and nothing is left behind.
#
# Run by testbed_workloads.rs. It used to crash bulkheadd (a corrupted heap: segfaults in h2's stream table,
# "polled after complete", garbage gRPC frames) a few seconds after the five domains started: the bed's Xen
# switched FPU state lazily, which corrupted dom0 processes under QEMU's TCG (ci/scenarios/concurrent-pv-boots.sh
# measures it; the fix is spec-ctrl=eager-fpu in ci/harness/src/qemu.rs). By hand, with the test's inputs
# (scenario-lib.sh and busybox-oci.tar added to the bed):
#   ci/testbed run --add runtime/daemon/tests/scenarios/lib.sh:/root/scenario-lib.sh \
#     --add busybox-oci.tar:/root/busybox-oci.tar runtime/daemon/tests/scenarios/concurrent-zones.sh
set -Eeuo pipefail

. /root/scenario-lib.sh
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

start_daemon
bulkhead image import /root/busybox-oci.tar --reference busybox:test >/dev/null || fail "image import"
# Five zones at once.
t0=$(now)
pids=()
for n in 1 2 3 4 5; do
  bulkhead zone launch --image busybox:test --name "c$n" --memory 48 --attach -- /bin/sh -c "echo zone c$n" >"/tmp/c$n.out" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent launch failed"; done
echo "figure: five concurrent launches to all exited: $(since "$t0") s"
for n in 1 2 3 4 5; do
  [ "$(cat "/tmp/c$n.out")" = "zone c$n" ] || fail "zone c$n printed [$(cat "/tmp/c$n.out")]"
done
[ "$(ours)" = "bulkhead-c1,bulkhead-c2,bulkhead-c3,bulkhead-c4,bulkhead-c5" ] || fail "xl lists [$(ours)]"
for n in 1 2 3 4 5; do bulkhead zone destroy "c$n"; done

nothing_left
echo "scenario ok"
