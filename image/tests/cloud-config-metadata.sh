#!/bin/bash
# Host-side test of the image's first-boot configuration against metadata servers (run as root by ci/test's
# image tier; no VM, no build needed): in a private network namespace where 169.254.169.254 is local and the
# default route exists, a stub server speaks AWS IMDSv2 (token by PUT, user-data only with the token) or GCE's
# metadata API (user-data only with Metadata-Flavor: Google); image/tree/usr/lib/bulkhead/cloud-config must
# fetch and apply the user-data from each, and with no server answering, give up at once and apply nothing.
# /var/lib and /run/bulkhead are private tmpfs mounts, the host name a private UTS namespace.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
script=$here/../tree/usr/lib/bulkhead/cloud-config
user_data=$here/cidata/user-data
[ "$(id -u)" = 0 ] || { echo "cloud-config-metadata.sh needs root (namespaces)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/stub.py" <<'PY'
import http.server, sys
body = open(sys.argv[1], "rb").read()
flavor = sys.argv[2]
class Stub(http.server.BaseHTTPRequestHandler):
    def reply(self, code, data=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_PUT(self):
        ok = flavor == "aws" and self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.reply(200, b"tok-123") if ok else self.reply(403)
    def do_GET(self):
        if flavor == "aws":
            ok = self.path == "/latest/user-data" and self.headers.get("X-aws-ec2-metadata-token") == "tok-123"
        else:
            ok = self.path == "/computeMetadata/v1/instance/attributes/user-data" and self.headers.get("Metadata-Flavor") == "Google"
        self.reply(200, body) if ok else self.reply(401)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("169.254.169.254", 80), Stub).serve_forever()
PY

# run FLAVOR: prints the status line the script left, then the host name it set.
run() {
  timeout 120 unshare --mount --net --uts bash -c '
    set -euo pipefail
    ip link set lo up && ip addr add 169.254.169.254/32 dev lo && ip route add default dev lo
    mount -t tmpfs tmpfs /var/lib && mkdir -p /run/bulkhead && mount -t tmpfs tmpfs /run/bulkhead
    if [ "$1" != none ]; then
      python3 "$2/stub.py" "$3" "$1" & stub=$!
      for _ in $(seq 300); do ss -Hltn "sport = :80" | grep -q . && break; sleep 0.1; done
    fi
    t0=$(date +%s)
    "$4" 2>/dev/null || true
    echo "$(cat /run/bulkhead/cloud-config/status) in $(($(date +%s) - t0)) s"
    hostname
    [ "$1" = none ] || { grep -q "^clusterDomain: cluster.local$" /var/lib/kubelet/config.yaml && echo kubelet-config; }
    [ -z "${stub:-}" ] || kill "$stub"' _ "$1" "$work" "$user_data" "$script"
}

rc=0
for flavor in aws gce; do
  out=$(run $flavor)
  echo "$flavor: $(tr '\n' ' ' <<<"$out")"
  case "$flavor" in aws) want="AWS IMDSv2" ;; gce) want="GCE metadata" ;; esac
  { grep -q "^applied [0-9a-f]\{16\} from $want in" <<<"$out" && grep -qx bulkhead-cidata-test <<<"$out" &&
    grep -qx kubelet-config <<<"$out"; } || { echo "FAILED: $flavor: user-data not applied" >&2; rc=1; }
done
out=$(run none)
echo "no server: $(tr '\n' ' ' <<<"$out")"
grep -q '^none in [0-9] s$' <<<"$out" || { echo "FAILED: with no metadata server the script did not give up at once" >&2; rc=1; }
[ $rc = 0 ] && echo "cloud config metadata ok"
exit $rc
