#!/bin/bash
# Workloads from an imported image in real zones, through bulkheadd and the CLI: output and exit codes reach
# the CLI, exec with and without a terminal, logs -f, SIGKILL, a kill -9 of the daemon with workloads running,
# and nothing left behind. Five zones launched at once are in concurrent-zones.sh.
# The test adds a busybox OCI layout (tar) as /root/busybox-oci.tar. Prints "scenario ok" at the end.
set -Eeuo pipefail

. /root/scenario-lib.sh
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

start_daemon
bulkhead image import /root/busybox-oci.tar --reference busybox:test >/dev/null || fail "image import"
bulkhead image list

# Output and exit code reach the CLI.
t0=$(now)
out=$(bulkhead zone launch --image busybox:test --name hello --memory 48 --attach -- /bin/sh -c 'echo hello from a zone')
echo "figure: zone launch to workload exit (--attach): $(since "$t0") s"
[ "$out" = "hello from a zone" ] || fail "launch --attach printed [$out]"
rc=0
bulkhead zone launch --image busybox:test --name seven --memory 48 --wait -- /bin/sh -c 'exit 7' || rc=$?
[ "$rc" = 7 ] || fail "exit 7 gave $rc"
# The image's own entrypoint and cmd when no command is given ("/bin/sh -c 'echo ok'" as user 1000).
out=$(bulkhead zone launch --image busybox:test --name default --memory 48 --attach)
[ "$out" = ok ] || fail "the image's default command printed [$out]"

# A long-running workload: exec without and with a terminal, with stdin, then SIGKILL gives 137.
bulkhead zone launch --image busybox:test --name sleeper --memory 48 -- /bin/busybox sleep 600 >/dev/null
out=$(bulkhead zone exec sleeper -- /bin/busybox hostname)
[ "$out" = sleeper ] || fail "exec hostname printed [$out]"
out=$(bulkhead zone exec -t sleeper -- /bin/busybox tty | tr -d '\r')
case "$out" in /dev/pts/*) ;; *) fail "exec -t: tty printed [$out]" ;; esac
out=$(bulkhead zone exec sleeper -- /bin/busybox tty | tr -d '\r' || true)
[ "$out" = "not a tty" ] || fail "exec without -t: tty printed [$out]"
out=$(echo piped through | bulkhead zone exec -i sleeper -- /bin/busybox cat)
[ "$out" = "piped through" ] || fail "exec -i: cat printed [$out]"
rc=0
bulkhead zone exec sleeper -- /bin/sh -c 'exit 3' || rc=$?
[ "$rc" = 3 ] || fail "exec exit 3 gave $rc"
out=$(bulkhead zone exec sleeper -- /bin/busybox cat /proc/1/cmdline | tr '\0' ' ')
[ "$out" = "/bin/busybox sleep 600 " ] || fail "the exec does not see the workload as pid 1: [$out]"
bulkhead zone kill sleeper --signal KILL
rc=0
bulkhead zone wait sleeper || rc=$?
[ "$rc" = 137 ] || fail "SIGKILL gave $rc"

# logs -f follows output as it is printed, and ends with the workload.
bulkhead zone launch --image busybox:test --name ticker --memory 48 -- \
  /bin/sh -c 'i=0; while [ $i -lt 5 ]; do echo tick $i; i=$((i+1)); /bin/busybox sleep 1; done' >/dev/null
bulkhead zone logs -f ticker >/tmp/ticks
[ "$(cat /tmp/ticks | paste -sd, -)" = "tick 0,tick 1,tick 2,tick 3,tick 4" ] || fail "logs -f gave [$(cat /tmp/ticks)]"
[ "$(bulkhead zone logs ticker --tail 2 | paste -sd, -)" = "tick 3,tick 4" ] || fail "logs --tail 2"

for z in hello seven default sleeper ticker; do bulkhead zone destroy "$z"; done

# kill -9 of the daemon while workloads run: zones and workloads carry on, the restarted daemon finds them
# again, and nothing is lost: no tick is missing from the log, an exit that happened while no daemon ran is
# reported, and the workloads stay controllable.
bulkhead zone launch --image busybox:test --name steady --memory 48 -- \
  /bin/sh -c 'i=0; while true; do echo tick $i; i=$((i+1)); /bin/busybox sleep 1; done' >/dev/null
bulkhead zone launch --image busybox:test --name brief --memory 48 -- \
  /bin/sh -c '/bin/busybox sleep 4; echo bye; exit 5' >/dev/null
kill -9 "$(cat /tmp/bulkheadd.pid)"
wait "$(cat /tmp/bulkheadd.pid)" 2>/dev/null || true
t0=$(now)
sleep 8
start_daemon
for _ in $(seq 100); do
  [ "$(bulkhead zone logs brief 2>/dev/null)" = bye ] && break
  sleep 0.2
done
echo "figure: daemon restart to the zone's catch-up: $(since "$t0") s (8 s of it without a daemon)"
rc=0
bulkhead zone wait brief || rc=$?
[ "$rc" = 5 ] || fail "brief ended while no daemon ran: exit 5 expected, got $rc"
[ "$(bulkhead zone logs brief)" = bye ] || fail "brief's output is lost: [$(bulkhead zone logs brief)]"
[ "$(field steady state)" = ready ] || fail "zone steady is $(field steady state) after the restart"
out=$(bulkhead zone exec steady -- /bin/busybox hostname)
[ "$out" = steady ] || fail "exec after the restart printed [$out]"
sleep 2
bulkhead zone kill steady --signal KILL
rc=0
bulkhead zone wait steady || rc=$?
[ "$rc" = 137 ] || fail "SIGKILL after the restart gave $rc"
ticks=$(bulkhead zone logs steady | sed -n 's/^tick //p')
n=$(wc -l <<<"$ticks")
[ "$n" -ge 10 ] || fail "steady printed only $n ticks across the restart"
[ "$ticks" = "$(seq 0 $((n - 1)))" ] || fail "ticks are missing across the restart: $(paste -sd, <<<"$ticks")"
echo "steady: $n ticks, none lost across the restart"

for z in steady brief; do bulkhead zone destroy "$z"; done

# Nothing left behind: no domain, loop device, zone or workload record, or log.
nothing_left
[ -z "$(ls -A /var/lib/bulkhead/logs)" ] || fail "logs left: $(ls /var/lib/bulkhead/logs)"
echo "scenario ok"
