#!/bin/bash
# Diagnostic, not run by CI: shows that dom0 processes get their memory corrupted while several PV domains are
# created at once in this emulated test bed, with no Bulkhead code involved in the domain builds.
#
#   ci/testbed run --add runtime/daemon/tests/scenarios/lib.sh:/root/scenario-lib.sh --timeout 300 \
#     ci/scenarios/concurrent-pv-boots.sh
#
# bulkheadd runs with one idle zone and a client loops on `bulkhead zone list`; meanwhile four rounds of five
# concurrent `xl create` of the zone kernel (self-test: boot, power off). Measured 2026-11-22 (QEMU 10.0.2 TCG,
# Xen 4.17, Debian 6.1 dom0): a general protection fault in the `bulkhead zone list` client (libc) in round 2
# and a segfault in xl itself in round 4; with bulkheadd doing the builds instead, bulkheadd's heap is hit.
# The scenario prints the kernel's reports of crashed processes and "scenario done"; it does not decide.
set -uo pipefail
. /root/scenario-lib.sh
set +e
trap - ERR
start_daemon
bulkhead zone create idle --memory 48 --start >/dev/null
(while true; do bulkhead zone list >/dev/null 2>&1 || echo "zone list failed"; done) &
load=$!
for round in 1 2 3 4; do
  echo "round $round"
  pids=()
  for n in 1 2 3 4 5; do
    cat >"/tmp/s$n.cfg" <<CFG
name = "s$n"
type = "pv"
kernel = "/usr/lib/bulkhead/zone/kernel"
ramdisk = "/usr/lib/bulkhead/zone/initrd"
memory = 48
extra = "console=hvc0 quiet bulkhead.zone=s$n bulkhead.hostname=s$n bulkhead.selftest=poweroff"
on_poweroff = "destroy"
CFG
    xl create "/tmp/s$n.cfg" >/dev/null 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  sleep 8
  kill -0 "$(cat /tmp/bulkheadd.pid)" || echo "bulkheadd died in round $round"
done
kill "$load"
dmesg | grep -i -E 'segfault|general protection' || echo "no crashed processes reported"
echo "scenario done"
