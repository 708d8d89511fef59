#!/bin/bash
# bulkheadd and the bulkhead CLI as a node runs them, in the test bed's dom0: zones through libxl, a kill -9
# of the daemon with two zones running, graceful stop, garbage on a zone's channel, destroy without leftovers,
# crash detection.
# Prints "scenario ok" at the end; figures as "figure: ..." lines.
set -Eeuo pipefail

. /root/scenario-lib.sh

start_daemon
t0=$(date +%s.%N)
bulkhead zone create a --memory 48 --start >/dev/null || fail "create a"
t1=$(date +%s.%N)
bulkhead zone create b --memory 48 --start >/dev/null || fail "create b"
echo "figure: zone create+start through bulkheadd: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
# Ready = the zone's init connected over the vchan and was welcomed.
wait_state a ready
wait_state b ready
t2=$(date +%s.%N)
echo "figure: two zones created to both ready: $(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.2f", b - a }') s"
bulkhead zone list
[ -n "$(field a init_version)" ] || fail "zone a reports no init version"
echo "zone a: init $(field a init_version), kernel $(field a kernel_release)"
[ "$(ours)" = "bulkhead-a,bulkhead-b" ] || fail "expected domains bulkhead-a and bulkhead-b, xl lists: [$(ours)]"
domid_a=$(field a domid)
[ "$(field a virt_mode)" = pv ] || fail "zone a is not PV"

# The daemon dies hard; its zones are VMs and keep running.
kill -9 "$(cat /tmp/bulkheadd.pid)"
wait "$(cat /tmp/bulkheadd.pid)" 2>/dev/null || true
[ "$(ours)" = "bulkhead-a,bulkhead-b" ] || fail "zones died with the daemon: [$(ours)]"
start_daemon
bulkhead zone list
[ "$(field a state)" = ready ] || fail "zone a after restart: $(field a state)"
[ "$(field a domid)" = "$domid_a" ] || fail "zone a's domid changed across the restart"
[ "$(field b state)" = ready ] || fail "zone b after restart: $(field b state)"

# Still controllable: a graceful stop (the zone init powers off on the shutdown request), then destroys.
t0=$(date +%s.%N)
bulkhead zone stop a --timeout 60 >/dev/null || fail "stop a"
t1=$(date +%s.%N)
echo "figure: graceful zone stop: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
[ "$(field a state)" = stopped ] || fail "zone a after stop: $(field a state)"
grep -q "did not power off in time" "$daemon_log" && fail "zone a had to be destroyed, not stopped"
# Fault injection: a zone whose init writes garbage on the host channel (after a valid hello) is failed and
# destroyed; the daemon and the other zone carry on.
bulkhead zone create g --memory 48 --kernel-arg bulkhead.selftest=channel-garbage --start >/dev/null \
  || fail "create g"
t0=$(date +%s.%N)
wait_state g failed
t1=$(date +%s.%N)
echo "figure: garbage on the channel reported failed within $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s of start"
# The reason has commas and quotes, which field() does not read: take the JSON line whole.
reason=$(bulkhead zone get g -o json | grep '"failure_reason"')
echo "failure reason: $reason"
grep -q "protocol" <<<"$reason" || fail "the reason does not name the protocol violation"
kill -0 "$(cat /tmp/bulkheadd.pid)" || fail "the daemon died of a zone's garbage"
[ "$(field b state)" = ready ] || fail "zone b suffered from zone g's garbage: $(field b state)"
for _ in $(seq 50); do [ "$(ours)" = bulkhead-b ] && break; sleep 0.2; done
[ "$(ours)" = bulkhead-b ] || fail "the garbage zone's domain was not destroyed: [$(ours)]"
bulkhead zone destroy g

bulkhead zone destroy a
bulkhead zone destroy b
bulkhead zone destroy b # idempotent
[ -z "$(ours)" ] || fail "domains left after destroy: $(ours)"
[ -z "$(ls -A /var/lib/bulkhead/zones)" ] || fail "state files left: $(ls /var/lib/bulkhead/zones)"

# A zone whose init cannot start: the kernel panics, Xen reports a crash, the daemon marks it failed.
bulkhead zone create c --memory 48 --kernel-arg rdinit=/nonexistent --start >/dev/null || fail "create c"
t0=$(date +%s.%N)
state=
for _ in $(seq 300); do
  state=$(field c state)
  [ "$state" = failed ] && break
  sleep 0.2
done
t1=$(date +%s.%N)
[ "$state" = failed ] || fail "zone c is $state, not failed"
echo "figure: crash reported failed within $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s of start"
echo "failure reason: $(field c failure_reason)"
field c failure_reason | grep -q crashed || fail "reason does not say crashed"
[ -z "$(ours)" ] || fail "the crashed domain was not cleaned up: $(ours)"
bulkhead zone destroy c
echo "scenario ok"
