#!/bin/bash
# Boots zones whose /init is bulkhead-zone (the zone kernel and initramfs as the node installs them) and
# prints, per case, a header line and the zone's console with each line stamped in ms since `xl create`:
#   === case NAME memory=MIB rc=RC gone=yes|no ms=MS
#   NAME| MS console-line
# RC is `timeout xl create -c`'s exit code (124: the zone was still running at the limit and was destroyed),
# gone says whether the domain had left `xl list` afterwards: only a power-off destroys it (a crash or reboot
# leaves it listed, and this script then destroys it). The Rust test (testbed_zone_boot.rs) judges
# the output; this script fails only if the bed lacks the zone's files.
set -euo pipefail
kernel=/usr/lib/bulkhead/zone/kernel
initrd=/usr/lib/bulkhead/zone/initrd
for f in "$kernel" "$initrd"; do
  [ -f "$f" ] || { echo "missing $f in dom0" >&2; exit 1; }
done

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# boot_zone NAME MEMORY LIMIT EXTRA [shutdown]: boots one zone with `xl create -c`, for at most LIMIT seconds.
# With "shutdown", asks the zone to power off with `xl shutdown` once its ready line is on the console.
boot_zone() {
  local name=$1 mem=$2 limit=$3 extra=$4 action=${5:-} dom=bulkhead-zone-$1 rc gone start pid
  cat >"/tmp/$name.cfg" <<CFG
name = "$dom"
type = "pv"
kernel = "$kernel"
ramdisk = "$initrd"
extra = "$extra"
memory = $mem
vcpus = 1
on_poweroff = "destroy"
on_reboot = "preserve"
on_crash = "preserve"
CFG
  start=$(now_ms)
  # Lines are stamped as they arrive (nothing in the pipe buffers: no tr/sed between xl and the loop).
  { rc=0; timeout "$limit" xl create -c "/tmp/$name.cfg" 2>&1 || rc=$?; echo $rc >"/tmp/$name.rc"; } | {
    local line
    while IFS= read -r line; do
      printf '%s| %d %s\n' "$name" $(($(now_ms) - start)) "${line%$'\r'}"
    done
  } >"/tmp/$name.console" &
  pid=$!
  if [ "$action" = shutdown ]; then
    for _ in $(seq $((limit * 5))); do
      grep -q 'bulkhead-zone: ready' "/tmp/$name.console" && break
      sleep 0.2
    done
    echo "$name| $(($(now_ms) - start)) [scenario] xl shutdown $dom: $(xl shutdown "$dom" >/dev/null 2>&1 && echo sent || echo failed)"
  fi >>"/tmp/$name.shutdown"
  wait "$pid" || true
  rc=$(cat "/tmp/$name.rc")
  # The domain is destroyed on power-off; give the toolstack a moment to finish.
  gone=no
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if ! xl list "$dom" >/dev/null 2>&1; then gone=yes; break; fi
    sleep 1
  done
  [ $gone = yes ] || xl destroy "$dom" >/dev/null 2>&1 || true
  echo "=== case $name memory=$mem rc=$rc gone=$gone ms=$(($(now_ms) - start))"
  cat "/tmp/$name.console"
  [ ! -f "/tmp/$name.shutdown" ] || cat "/tmp/$name.shutdown"
}

base="console=hvc0 quiet bulkhead.zone=t1"
boot_zone ok 64 150 "$base bulkhead.hostname=zone-t1 bulkhead.selftest=poweroff"
boot_zone bad-hostname 64 150 "$base bulkhead.hostname=-bad- bulkhead.selftest=poweroff"
boot_zone shutdown 64 150 "$base bulkhead.hostname=zone-t2 bulkhead.later=1" shutdown
boot_zone ok-32mib 32 150 "$base bulkhead.hostname=zone-t1 bulkhead.selftest=poweroff"
echo "=== xl list"
xl list
