#!/bin/bash
# Diagnostic, not run by CI: measures whether dom0 processes get their memory or registers corrupted while
# several PV domains are created at once in this emulated test bed, with no Bulkhead code involved in the
# domain builds.
#
#   ci/testbed run --add runtime/daemon/tests/scenarios/lib.sh:/root/scenario-lib.sh --timeout 500 \
#     ci/scenarios/concurrent-pv-boots.sh
#
# (BULKHEAD_TESTBED_XEN_ARGS="..." adds Xen options for an experiment.)
#
# bulkheadd runs with one idle zone, a client loops on `bulkhead zone list` and a checker loops on checksumming
# a file whose sum it knows (a wrong sum is corruption that crashed nothing); meanwhile ROUNDS rounds of five
# concurrent `xl create` of the zone kernel (self-test: boot, power off), no new round after BUDGET seconds. Per round and in total it counts:
#   kernel  the kernel's reports of crashed user processes (segfault, general protection, invalid opcode)
#   client  failed `bulkhead zone list` runs          xl  failed `xl create` runs
#   sum     wrong checksums                           daemon  bulkheadd gone
# and ends with one line "RESULT crashes=N kernel=.. client=.. xl=.. sum=.. daemon=.. rounds=R", then the
# kernel's reports and Xen's and dom0's warnings. It does not decide (exit 0 either way).
#
# History: 2026-11-22 (QEMU 10.0.2 TCG, Xen 4.17, Debian 6.1 dom0, Xen's defaults): a GP fault in the client
# (libc) in round 2 and a segfault in xl itself in round 4; with bulkheadd doing the builds its heap is hit.
set -uo pipefail
. /root/scenario-lib.sh
set +e
trap - ERR
ROUNDS=${ROUNDS:-10} BUDGET=${BUDGET:-240} # rounds, and seconds after which no new round starts
kernel_reports() { dmesg | grep -c -E 'segfault at|general protection|trap invalid opcode|traps: '; }
echo "xen: $(xl info | sed -n 's/^xen_version *: //p'), dom0 kernel $(uname -r), xen cmdline: $(xl info | sed -n 's/^xen_commandline *: //p')"
echo "dom0 cpu: $(grep -o -w -E 'avx|avx2|avx512f|sha_ni|xsave|xsaveopt|xsavec|xsaves' /proc/cpuinfo | sort -u | paste -sd' ')"
xl dmesg | grep -E 'Support for|Other:|XPTI|PV L1TF|eager|Xen settings' | sed 's/^/xl dmesg: /'
start_daemon
bulkhead zone create idle --memory 48 --start >/dev/null
mkdir -p /tmp/diag
# Once bulkheadd is gone every client would fail: that is counted once, as daemon.
(while kill -0 "$(cat /tmp/bulkheadd.pid)" 2>/dev/null; do
  bulkhead zone list >/dev/null 2>&1 || echo x >>/tmp/diag/client
done) &
load=$!
head -c 4M /usr/lib/bulkhead/zone/kernel >/tmp/diag/blob
ref=$(sha256sum </tmp/diag/blob)
(while true; do [ "$(sha256sum </tmp/diag/blob)" = "$ref" ] || echo x >>/tmp/diag/sum; done) &
checker=$!
count() { [ -f "/tmp/diag/$1" ] && wc -l <"/tmp/diag/$1" || echo 0; }
k0=$(kernel_reports)
prev_k=$k0 prev_c=0 prev_x=0 prev_s=0 daemon=0
started=$SECONDS done_rounds=0
for round in $(seq "$ROUNDS"); do
  [ $((SECONDS - started)) -lt "$BUDGET" ] || break
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
    (timeout 90 xl create "/tmp/s$n.cfg" >/dev/null 2>&1 || echo x >>/tmp/diag/xl) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  sleep 8
  # Leftovers of a round (a guest that did not power off) would skew the next one.
  for n in 1 2 3 4 5; do xl destroy "s$n" >/dev/null 2>&1; done
  d=0; kill -0 "$(cat /tmp/bulkheadd.pid)" 2>/dev/null || { d=1; daemon=1; }
  k=$(kernel_reports) c=$(count client) x=$(count xl) s=$(count sum)
  echo "round $round: kernel=$((k - prev_k)) client=$((c - prev_c)) xl=$((x - prev_x)) sum=$((s - prev_s)) daemon-gone=$d"
  prev_k=$k prev_c=$c prev_x=$x prev_s=$s done_rounds=$round
done
kill "$load" "$checker" 2>/dev/null
wait "$load" "$checker" 2>/dev/null
k=$(( $(kernel_reports) - k0 )) c=$(count client) x=$(count xl) s=$(count sum)
echo "RESULT crashes=$((k + c + x + s + daemon)) kernel=$k client=$c xl=$x sum=$s daemon=$daemon rounds=$done_rounds seconds=$((SECONDS - started))"
echo "--- kernel reports of crashed processes"
dmesg | grep -E 'segfault at|general protection|trap invalid opcode|traps: ' || echo "(none)"
echo "--- dom0 kernel warnings (BUG, WARNING, Oops; xen, balloon, privcmd, grant failures)"
dmesg | grep -E 'BUG|WARNING|Oops|(xen|balloon|privcmd|gnt|grant).*(fail|error|warn|refus|unable)' | tail -30
echo "--- Xen warnings"
xl dmesg | grep -v -E '^\(XEN\) *\(d0\)' | tail -25
echo "scenario done"
