#!/bin/bash
# Runs, inside dom0, the tests that need a live Xen: every test binary under /opt/bulkhead-tests/tests with
# --ignored (those tests are #[ignore = "needs xen"] on the host), then every example under
# /opt/bulkhead-tests/examples. Exits non-zero if any failed. ci/test testbed adds the binaries.
set -u
rc=0
for t in /opt/bulkhead-tests/tests/*; do
  [ -x "$t" ] || continue
  echo "== tests: $(basename "$t")"
  "$t" --ignored --test-threads=1 || rc=1
done
for e in /opt/bulkhead-tests/examples/*; do
  [ -x "$e" ] || continue
  echo "== example: $(basename "$e")"
  "$e" || { echo "example $(basename "$e") failed" >&2; rc=1; }
done
exit $rc
