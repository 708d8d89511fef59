#!/bin/bash
# Benchmark (not a test): what one zone costs beyond the memory its containers may use, the figure behind the
# RuntimeClass's pod overhead (deploy/runtimeclass.yaml). Prints "figure: ..." lines and a table.
#
#   ci/testbed run --add runtime/daemon/tests/scenarios/lib.sh:/root/scenario-lib.sh ci/bench/zone-overhead.sh
#
# For zones of several sizes M, each running one idle workload:
#   xen     what Xen's free memory drops by beyond M (page tables, p2m, the domain's own structures)
#   dom0    dom0's used memory growth per zone (bulkheadd's state, blkback, the channel), from 3 zones at once
#   guest   M minus the zone's MemAvailable at idle: its kernel (reserved, page structs, slab) and init
# A pod whose containers may use L gets a zone of L + guest; the node pays L + guest + xen + dom0.
set -euo pipefail
. /root/scenario-lib.sh
sizes=${BENCH_SIZES:-64 128 256 512}

free_mib() { xl info free_memory; }
dom0_used_kib() { free -k | awk '/Mem:/ { print $3 }'; }
meminfo_kib() { # meminfo_kib ZONE FIELD: the zone kernel's /proc/meminfo field, KiB
  bulkhead zone exec "$1" -- /bin/busybox cat /proc/meminfo | awk -v f="$2:" '$1 == f { print $2 }'
}

start_daemon
busybox_oci_layout /tmp/busybox-oci
bulkhead image import /tmp/busybox-oci --reference busybox:bench >/dev/null

# dom0's share does not depend on the zone's size: 3 small zones at once.
u0=$(dom0_used_kib)
for i in 1 2 3; do
  bulkhead zone launch --image busybox:bench --name "d$i" --memory 64 -- /bin/busybox sleep 3600 >/dev/null
done
sleep 3
u3=$(dom0_used_kib)
dom0=$(( (u3 - u0) / 3 ))
for i in 1 2 3; do bulkhead zone destroy "d$i" >/dev/null; done
echo "figure: dom0 used memory growth per running zone: $dom0 KiB"

printf '%-8s %-8s %-10s %-12s %-10s %-10s\n' "zone MiB" "xen KiB" "MemTotal" "MemAvailable" "guest KiB" "total MiB"
worst=0
for m in $sizes; do
  f0=$(free_mib)
  bulkhead zone launch --image busybox:bench --name "o$m" --memory "$m" -- /bin/busybox sleep 3600 >/dev/null
  sleep 5 # the zone's init settles
  f1=$(free_mib)
  total=$(meminfo_kib "o$m" MemTotal)
  avail=$(meminfo_kib "o$m" MemAvailable)
  bulkhead zone destroy "o$m" >/dev/null
  xen=$(( (f0 - f1 - m) * 1024 ))
  guest=$(( m * 1024 - avail ))
  all=$(( xen + guest + dom0 ))
  printf '%-8s %-8s %-10s %-12s %-10s %-10s\n' "$m" "$xen" "$total" "$avail" "$guest" "$(( (all + 1023) / 1024 ))"
  echo "figure: zone of $m MiB: xen $xen KiB, guest $guest KiB (MemTotal $total, MemAvailable $avail), with dom0 $(( (all + 1023) / 1024 )) MiB"
  [ "$all" -gt "$worst" ] && worst=$all
done
echo "figure: per-zone overhead (xen + guest + dom0), worst of sizes ${sizes// /,} MiB: $(( (worst + 1023) / 1024 )) MiB"
echo "bench done"
