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

# cargo_executables KIND CARGO-ARGS... : runs `cargo CARGO-ARGS...` and prints, one per line, the executables it
# produced of KIND: bin, test or example. Test-bed scenario tests (targets named testbed*) are left out of
# KIND=test: they boot the bed themselves. Cargo's diagnostics still reach stderr.
cargo_executables() {
  local kind=$1; shift
  (cd "$REPO_ROOT" && cargo "$@" --message-format=json-render-diagnostics) | jq -r --arg kind "$kind" '
    select(.reason == "compiler-artifact" and .executable != null)
    | select(if $kind == "test" then .profile.test and (.target.name | startswith("testbed") | not)
             else (.profile.test | not) and (.target.kind | index($kind)) end)
    | .executable'
}
