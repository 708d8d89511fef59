#!/bin/bash
# Benchmark (not a test): pull + convert of a multi-layer image (~100 MB by default) from a docker-registry on
# 127.0.0.1, Bulkhead's image store (runtime/oci/examples/image_pull.rs: the daemon's pull, unpack and
# mkfs.erofs, nothing else) against the peer pipeline on the same machine and registry: skopeo copy to an OCI
# layout, umoci unpack, mkfs.erofs. Prints "figure: ..." lines with wall time and peak RSS per run.
#
#   cargo build --release -p bulkhead-oci --example image_pull && ci/bench/image-pull.sh
#
# Needs root (both sides keep file owners), docker-registry, skopeo, umoci, erofs-utils and GNU time.
# BENCH_LAYERS (4) layers of BENCH_LAYER_MB (25) MiB each: half random bytes, half text, gzip -6.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/common.sh"
layers=${BENCH_LAYERS:-4}
layer_mb=${BENCH_LAYER_MB:-25}
runs=${BENCH_RUNS:-3}
puller=${IMAGE_PULL:-$REPO_ROOT/target/release/examples/image_pull}
[ "$(id -u)" = 0 ] || die "run as root: both pipelines keep file owners"
[ -x "$puller" ] || die "$puller is missing: cargo build --release -p bulkhead-oci --example image_pull"
for p in docker-registry skopeo umoci mkfs.erofs /usr/bin/time; do
  command -v "$p" >/dev/null || die "$p is missing (ci/deps build installs it)"
done

work=$(mktemp -d /var/tmp/bench-image-pull.XXXXXX)
registry_pid=
cleanup() {
  [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image, as an OCI layout.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
layer_json=() diff_ids=()
for i in $(seq 1 "$layers"); do
  root=$work/root$i
  mkdir -p "$root/data$i"
  half=$((layer_mb * 512))  # KiB
  head -c "${half}K" /dev/urandom >"$root/data$i/random.bin"
  { seq 1 100000000 || true; } | head -c "${half}K" >"$root/data$i/text.txt"
  tar -C "$root" --owner=0 --group=0 --mtime=@1700000000 -cf "$work/layer.tar" "data$i"
  diff_ids+=("\"sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)\"")
  gzip -6 -n -f "$work/layer.tar"
  digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  size=$(stat -c %s "$work/layer.tar.gz")
  mv "$work/layer.tar.gz" "$layout/blobs/sha256/$digest"
  layer_json+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}")
  rm -rf "$root"
done
join() { local IFS=,; echo "$*"; }
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$(join "${diff_ids[@]}")" >"$work/config.json"
config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$layout/blobs/sha256/$config"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[%s]}' \
  "$config" "$config_size" "$(join "${layer_json[@]}")" >"$work/manifest.json"
manifest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
manifest_size=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$layout/blobs/sha256/$manifest"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
  "$manifest" "$manifest_size" >"$layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
compressed=$(du -sb "$layout/blobs" | cut -f1)

# The registry, and the image in it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
ref=127.0.0.1:$port/bench/image:v1
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$ref"
echo "figure: image: $layers layers, $((layers * layer_mb)) MiB unpacked, $((compressed / 1048576)) MiB compressed"

measure() { # measure LABEL CMD... : appends "seconds kib" of CMD to $work/times
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time.one" "$@" >"$work/$label.out" 2>&1 \
    || { cat "$work/$label.out" >&2; die "$label failed"; }
  cat "$work/time.one" >>"$work/times"
}
for run in $(seq 1 "$runs"); do
  rm -rf "$work/bh" "$work/peer" "$work/bundle" "$work/peer.erofs" "$work/times"
  measure bulkhead "$puller" "$work/bh" "$ref" --insecure "127.0.0.1:$port"
  read -r bh_s bh_kib <"$work/times"
  rm -f "$work/times"
  measure skopeo skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/peer:v1"
  measure umoci umoci unpack --image "$work/peer:v1" "$work/bundle"
  measure mkfs mkfs.erofs --quiet --preserve-mtime "$work/peer.erofs" "$work/bundle/rootfs"
  peer_s=$(awk '{ s += $1 } END { printf "%.2f", s }' "$work/times")
  peer_kib=$(awk '$2 > m { m = $2 } END { print m }' "$work/times")
  echo "figure: run $run: bulkhead pull+convert ${bh_s} s, peak RSS $((bh_kib / 1024)) MiB;" \
    "peer skopeo+umoci+mkfs.erofs ${peer_s} s ($(awk '{ printf "%s ", $1 }' "$work/times")s), peak RSS $((peer_kib / 1024)) MiB"
done
