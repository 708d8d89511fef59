#!/bin/bash
# A/B upgrade with rollback, run by `ci/image upgrade-check` with --reboots: this script runs on every boot of
# one QEMU session and moves through phases kept in a marker file on /var (the state partition, which
# survives reboots and upgrades):
#   start            on slot A: upgrade to B (b.update on the run disk); `bulkhead node upgrade` reboots
#   upgraded-b       on slot B: the version is B's and B is the good slot; upgrade to the broken image
#   upgraded-broken  on the broken slot (A): its bulkheadd never starts, so bulkhead-mark-good gives the slot
#                    up and reboots by itself (this script only waits); back on B: the version is B's, B is
#                    still the good slot and A is recorded as failed. Exit 0.
set -Eeuo pipefail
run=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$run/expect.env"
state=/var/lib/bulkhead-upgrade-test
mkdir -p "$state"
phase=$(cat "$state/phase" 2>/dev/null || echo start)
version=$(sed -n 's/^IMAGE_VERSION=//p' /usr/lib/os-release | tr -d '"')
slot=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^bulkhead.slot=//p')
fail() {
  echo "FAILED ($phase): $*" >&2
  systemctl --no-pager --failed >&2 || true
  journalctl --no-pager -b -u bulkhead-mark-good -n 30 >&2 || true
  exit 1
}
trap 'rc=$?; [ $rc = 0 ] || echo "FAILED ($phase): line $LINENO: $BASH_COMMAND exited $rc" >&2' ERR
status_json() { bulkhead node status --json; }
field() { status_json | sed -n "s/.*\"$1\":\\(\"[^\"]*\"\\|null\\).*/\\1/p" | tr -d '"'; }
echo "boot: phase $phase, slot $slot, version $version, dom0 up $(cut -d' ' -f1 /proc/uptime) s"
bulkhead node status
marker() { echo "$1" >"$state/phase"; sync; }

upgrade() { # upgrade FILE NEXT-PHASE: installs FILE and reboots (the reboot ends this script)
  marker "$2"
  echo "figure: upgrading with $1, $(du -m "$run/$1" | cut -f1) MiB"
  # Prints the verify and write times; then systemd reboots the node, which ends this script.
  bulkhead node upgrade "$run/$1"
  sleep 600
  fail "still running 600 s after the upgrade asked for a reboot"
}

case "$phase" in
  start)
    [ "$slot" = a ] || fail "the image booted slot $slot, not a"
    [ "$version" = "$A_VERSION" ] || fail "slot a runs version $version, not $A_VERSION"
    [ "$(field good)" = a ] || fail "the good slot is $(field good), not a"
    upgrade b.update upgraded-b
    ;;
  upgraded-b)
    [ "$slot" = b ] || fail "after the upgrade to B the node runs slot $slot"
    [ "$version" = "$B_VERSION" ] || fail "slot b runs version $version, not $B_VERSION"
    [ "$(field good)" = b ] || fail "slot b did not become the good slot (good: $(field good))"
    systemctl is-active --quiet bulkheadd || fail "bulkheadd is not active on B"
    echo "upgrade to B ok: slot b, version $version, good slot b"
    upgrade broken.update upgraded-broken
    ;;
  upgraded-broken)
    if [ "$version" = "$BROKEN_VERSION" ]; then
      echo "on the broken image (slot $slot): waiting for it to give itself up and reboot"
      sleep 900
      fail "the broken slot did not reboot by itself within 900 s"
    fi
    [ "$slot" = b ] || fail "after the broken upgrade the node runs slot $slot, not b"
    [ "$version" = "$B_VERSION" ] || fail "the node runs version $version, not B's $B_VERSION"
    [ "$(field good)" = b ] || fail "the good slot is $(field good), not b"
    [ "$(field failed)" = a ] || fail "the broken slot a is not recorded as failed ($(field failed))"
    journalctl --no-pager -b -u bulkhead-mark-good -o cat | tail -3
    echo "rollback ok: the broken slot gave itself up; back on slot b, version $version"
    marker done
    ;;
  *) fail "unknown phase $phase" ;;
esac
