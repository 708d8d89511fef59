# Shared by the daemon's test-bed scenarios (sourced; the test adds it to the bed as /root/scenario-lib.sh):
# bulkheadd's configuration, starting it, failing with its log, and reading zone state through the CLI.
mkdir -p /etc/bulkhead
# Emulated Xen reports HVM + HAP but cannot boot PVH guests.
printf '[zone]\nauto-virt-mode = "pv"\n' >/etc/bulkhead/bulkheadd.toml

daemon_log=/tmp/bulkheadd.log
# Any unexpected failure (set -e) says which command at which line, and leaves the daemon's log behind.
trap 'echo "FAILED: line $LINENO: $BASH_COMMAND exited $?" >&2' ERR
trap 'rc=$?; if [ $rc != 0 ]; then echo "--- bulkheadd log (exit $rc)" >&2; tail -50 "$daemon_log" >&2; xl list >&2; echo "--- xen-hotplug.log" >&2; tail -15 /var/log/xen/xen-hotplug.log >&2 2>/dev/null; for c in /var/log/xen/console/guest-bulkhead-*.log; do [ -f "$c" ] && { echo "--- $c" >&2; tail -15 "$c" >&2; }; done; echo "--- dmesg" >&2; dmesg | tail -25 >&2; fi' EXIT
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
# start_registry STORAGE: Debian's docker-registry on dom0's 127.0.0.1:5000 serving STORAGE (a registry's
# storage directory made on the host), and bulkheadd configured to pull from it over plain HTTP. Call it
# before start_daemon.
start_registry() {
  cat >/root/registry.yml <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $1
http:
  addr: 127.0.0.1:5000
YML
  docker-registry serve /root/registry.yml >/tmp/registry.log 2>&1 &
  echo $! >/tmp/registry.pid
  # Go's start under emulation takes seconds: up to 60 s.
  for _ in $(seq 120); do
    if (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null; then
      printf '\n[registries."127.0.0.1:5000"]\ninsecure = true\n' >>/etc/bulkhead/bulkheadd.toml
      return 0
    fi
    sleep 0.5
  done
  cat /tmp/registry.log >&2
  fail "docker-registry did not listen on 127.0.0.1:5000"
}
# start_cri: bulkhead-cri on /run/bulkhead/cri.sock, with a pod network of Debian's bridge, host-local and
# loopback plugins (the bridge bhpods0 on 10.244.0.0/24, dom0 its gateway) as the node's CNI config.
cri_log=/tmp/bulkhead-cri.log
start_cri() {
  mkdir -p /etc/cni/net.d
  cat >/etc/cni/net.d/10-bulkhead-bed.conflist <<'JSON'
{"cniVersion":"1.0.0","name":"bed-pods","plugins":[
 {"type":"bridge","bridge":"bhpods0","isGateway":true,"ipMasq":false,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"loopback"}]}
JSON
  bulkhead-cri >"$cri_log" 2>&1 &
  for _ in $(seq 100); do [ -S /run/bulkhead/cri.sock ] && return 0; sleep 0.1; done
  cat "$cri_log" >&2
  fail "bulkhead-cri did not listen"
}
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
field() { # field ZONE KEY -> value from `bulkhead zone get -o json`
  bulkhead zone get "$1" -o json | sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p"
}
ours() { xl list | awk '$1 ~ /^bulkhead-/ { print $1 }' | LC_ALL=C sort | paste -sd, -; } # our domains, comma-separated
wait_state() { # wait_state ZONE STATE [TRIES]: polls every 0.2 s
  local st=
  for _ in $(seq "${3:-300}"); do
    st=$(field "$1" state)
    [ "$st" = "$2" ] && return 0
    sleep 0.2
  done
  fail "zone $1 is $st, not $2"
}

nothing_left() { # fails unless the zones' domains, loop devices, zone and workload records are all gone
  sleep 1
  [ -z "$(ours)" ] || fail "domains left: $(ours)"
  [ -z "$(losetup -a)" ] || fail "loop devices left: $(losetup -a)"
  [ -z "$(ls -A /var/lib/bulkhead/zones)" ] || fail "zone records left: $(ls /var/lib/bulkhead/zones)"
  [ -z "$(ls -A /var/lib/bulkhead/workloads)" ] || fail "workload records left: $(ls /var/lib/bulkhead/workloads)"
}
# busybox_oci_layout DIR: a one-layer OCI image layout of dom0's static busybox (/bin/busybox, /bin/sh), made
# with tar, gzip and sha256sum (for benches, which run without the Rust test's image tarball).
busybox_oci_layout() {
  local dir=$1 root layer diff config manifest
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$dir/blobs/sha256"
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  tar -C "$root" --owner=0 --group=0 -cf /tmp/layer.tar bin tmp
  diff=$(sha256sum /tmp/layer.tar | cut -d' ' -f1)
  gzip -n -f /tmp/layer.tar
  layer=$(sha256sum /tmp/layer.tar.gz | cut -d' ' -f1)
  mv /tmp/layer.tar.gz "$dir/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" >/tmp/config.json
  config=$(sha256sum /tmp/config.json | cut -d' ' -f1)
  mv /tmp/config.json "$dir/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$config" "$(stat -c %s "$dir/blobs/sha256/$config")" "$layer" "$(stat -c %s "$dir/blobs/sha256/$layer")" >/tmp/manifest.json
  manifest=$(sha256sum /tmp/manifest.json | cut -d' ' -f1)
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d}]}' \
    "$manifest" "$(stat -c %s /tmp/manifest.json)" >"$dir/index.json"
  mv /tmp/manifest.json "$dir/blobs/sha256/$manifest"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  rm -rf "$root"
}
