# Shared helpers for the ci/ scripts. Sourced, never run.
# Where slow artefacts live between runs: outside the checkout so a fresh clone reuses them.
BULKHEAD_CACHE=${BULKHEAD_CACHE:-/var/cache/bulkhead}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# content_hash FILE... : a short hash over the named files' contents (and names), for cache keys.
content_hash() {
  local f
  for f in "$@"; do printf '%s\0' "$f"; cat "$f"; done | sha256sum | cut -c1-16
}
