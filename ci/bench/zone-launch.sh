#!/bin/bash
# Benchmark (not a test): zone launch latency in the test bed, against the floor of `xl create` of the same
# kernel and initramfs. Prints "figure: ..." lines. The image is an OCI layout of dom0's static busybox
# (busybox_oci_layout, in the scenario library).
#
#   ci/testbed run --add runtime/daemon/tests/scenarios/lib.sh:/root/scenario-lib.sh ci/bench/zone-launch.sh
#
# Floor: `xl create` (zone kernel + bulkhead-zone, self-test mode) to the zone init's first console line.
# Bulkhead: `bulkhead zone launch --attach` to the workload's first output line, broken down from bulkheadd's
# log (domain build, kernel boot to init's hello, image disk attach) and the CLI's view.
set -euo pipefail
. /root/scenario-lib.sh
runs=${BENCH_RUNS:-3}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# first_line_after START PATTERN: reads stdin until a line matches PATTERN, prints seconds since START.
first_line_after() {
  local start=$1 pattern=$2 line
  while IFS= read -r line; do
    case "$line" in *$pattern*) elapsed "$start" "$(now)"; return 0 ;; esac
  done
  echo "never"
}


start_daemon
busybox_oci_layout /tmp/busybox-oci
bulkhead image import /tmp/busybox-oci --reference busybox:bench >/dev/null

floor=()
for i in $(seq "$runs"); do
  cat >/tmp/floor.cfg <<CFG
name = "floor$i"
type = "pv"
kernel = "/usr/lib/bulkhead/zone/kernel"
ramdisk = "/usr/lib/bulkhead/zone/initrd"
memory = 48
extra = "console=hvc0 quiet bulkhead.zone=floor$i bulkhead.hostname=floor$i bulkhead.selftest=poweroff"
on_poweroff = "destroy"
CFG
  t0=$(now)
  s=$(xl create -c /tmp/floor.cfg 2>&1 | first_line_after "$t0" "ready zone=")
  floor+=("$s")
  echo "floor run $i: xl create to init's first line: $s s"
  sleep 3
done

ours=()
for i in $(seq "$runs"); do
  t0=$(now)
  s=$(bulkhead zone launch --image busybox:bench --name "b$i" --memory 48 --attach -- /bin/sh -c 'echo first-output' \
    | first_line_after "$t0" "first-output")
  ours+=("$s")
  echo "bulkhead run $i: zone launch to the workload's first output: $s s"
  bulkhead zone destroy "b$i"
done

log=/tmp/bulkheadd.log
strip() { sed 's/\x1b\[[0-9;]*m//g' "$log"; }
echo "figure: floor (xl create to init's first line), s: ${floor[*]}"
echo "figure: bulkhead (zone launch to first workload output), s: ${ours[*]}"
echo "figure: domain builds (libxl, paused), s: $(strip | sed -n 's/.*domain created (paused).*name=bulkhead-b[0-9]*.*elapsed=\([0-9.]*m\{0,1\}s\).*/\1/p' | paste -sd' ' -)"
echo "figure: kernel start to init hello, ms: $(strip | sed -n 's/.*zone ready zone=b[0-9]*.*boot_ms=\([0-9]*\).*/\1/p' | paste -sd' ' -)"
echo "figure: image disk hot-plug, s: $(strip | sed -n 's/.*disk attached domid=[0-9]* vdev=xvdb .*elapsed=\([0-9.]*m\{0,1\}s\).*/\1/p' | paste -sd' ' -)"
awk -v f="${floor[*]}" -v o="${ours[*]}" 'BEGIN {
  n = split(f, a, " "); m = split(o, b, " "); for (i = 1; i <= n; i++) fs += a[i]; for (i = 1; i <= m; i++) os += b[i];
  printf "figure: mean floor %.2f s, mean bulkhead %.2f s, ratio %.2f\n", fs / n, os / m, (os / m) / (fs / n) }'

# dom0 memory per running zone: bulkheadd's RSS and dom0's used memory with 0 and 3 idle zones.
rss() { awk '/VmRSS/ { print $2 }' "/proc/$(cat /tmp/bulkheadd.pid)/status"; }
used() { free -k | awk '/Mem:/ { print $3 }'; }
r0=$(rss); u0=$(used)
for i in 1 2 3; do bulkhead zone launch --image busybox:bench --name "m$i" --memory 32 -- /bin/busybox sleep 600 >/dev/null; done
sleep 2
r3=$(rss); u3=$(used)
echo "figure: bulkheadd RSS growth per running zone: $(( (r3 - r0) / 3 )) KiB; dom0 used memory growth per zone: $(( (u3 - u0) / 3 )) KiB (32 MiB zones)"
for i in 1 2 3; do bulkhead zone destroy "m$i"; done
echo "bench done"
