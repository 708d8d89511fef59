#!/bin/bash
# bulkheadd and the bulkhead CLI as a node runs them, in the test bed's dom0: zones through libxl, a kill -9
# of the daemon with two zones running, graceful stop, destroy without leftovers, crash detection.
# Prints "scenario ok" at the end; figures as "figure: ..." lines.
set -Eeuo pipefail

mkdir -p /etc/bulkhead
# Emulated Xen reports HVM + HAP but cannot boot PVH guests.
printf '[zone]\nauto-virt-mode = "pv"\n' >/etc/bulkhead/bulkheadd.toml

daemon_log=/tmp/bulkheadd.log
# Any unexpected failure (set -e) says which command at which line, and leaves the daemon's log behind.
trap 'echo "FAILED: line $LINENO: $BASH_COMMAND exited $?" >&2' ERR
trap 'rc=$?; if [ $rc != 0 ]; then echo "--- bulkheadd log (exit $rc)" >&2; tail -50 "$daemon_log" >&2; xl list >&2; fi' EXIT
start_daemon() {
  bulkheadd >>"$daemon_log" 2>&1 &
  echo $! >/tmp/bulkheadd.pid
  for _ in $(seq 100); do
    bulkhead zone list >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "bulkheadd did not come up; its log:" >&2
  cat "$daemon_log" >&2
  exit 1
}
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
# Observers (reading state, not changing it) are retried when one of their processes fails: a rare, not yet
# explained crash of a plumbing process (sed, or xl) around zone start-up and the daemon's kill -9 in this
# emulated dom0 must not decide the scenario. Every retry is reported; the daemon's own commands are never retried.
observe() { # observe FUNCTION ARGS... -> FUNCTION's output, retried up to 3 times on failure
  local out rc try
  for try in 1 2 3; do
    if out=$("$@"); then printf '%s\n' "$out"; return 0; else rc=$?; fi
    echo "RETRY: observer '$*' failed with exit $rc (attempt $try)" >&2
  done
  return "$rc"
}
field_once() {
  bulkhead zone get "$1" -o json | sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p"
}
field() { observe field_once "$@"; } # field ZONE KEY -> value from `bulkhead zone get -o json`
ours_once() { xl list | awk '$1 ~ /^bulkhead-/ { print $1 }' | LC_ALL=C sort | paste -sd, -; }
ours() { observe ours_once; } # our domains as xl lists them, comma-separated
wait_state() { # wait_state ZONE STATE [TRIES]: polls every 0.2 s
  local st=
  for _ in $(seq "${3:-300}"); do
    st=$(field "$1" state)
    [ "$st" = "$2" ] && return 0
    sleep 0.2
  done
  fail "zone $1 is $st, not $2"
}

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
