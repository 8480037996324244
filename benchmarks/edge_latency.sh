#!/bin/bash
# Side by side on the appliance: the same Traefik image and configuration reached (a) through
# systemd's socket (port 443, what the appliance runs) and (b) through rootless port forwarding
# (a throw-away copy published on 18443, what it ran before). Run as root on the appliance:
#   bash benchmarks/edge_latency.sh     (docs/isolation.md has the figures)
set -euo pipefail
cd /
uid=$(id -u appliance)
U="runuser -u appliance -- env XDG_RUNTIME_DIR=/run/user/$uid"
# The copy runs as Traefik's own UID, as the real one does (podman_service_ids).
cuid=$($U podman inspect --format '{{.Config.User}}' traefik); cuid=${cuid%%:*}
tmp=/var/tmp/edge-before; rm -rf $tmp; mkdir -p $tmp; chmod 755 $tmp; chown appliance-traefik: $tmp
# websecure binds :443 itself (no sockets passed); no ide/metrics entrypoints (their addresses
# belong to the real Traefik).
python3 - <<'PY'
import re
s = open("/etc/appliance/traefik/traefik.yml").read()
s = re.sub(r"\n  # The IDE's way.*?\n  metrics:\n    address: \"[^\"]*\"", "\n  metrics:\n    address: \":8082\"", s, flags=re.S)
open("/var/tmp/edge-before/traefik.yml", "w").write(s)
PY
chmod 644 $tmp/traefik.yml
$U podman rm -f traefik-before >/dev/null 2>&1 || true
$U podman run -d --name traefik-before --network edge-api -p 18443:443 \
  --sysctl net.ipv4.ip_unprivileged_port_start=80 --read-only --user "$cuid:$cuid" \
  -v $tmp/traefik.yml:/etc/traefik/traefik.yml:ro -v /etc/appliance/traefik/dynamic:/etc/traefik/dynamic:ro \
  -v /var/tmp/edge-before:/var/log/traefik:rw \
  --secret "traefik-tls-key,type=mount,uid=${cuid},gid=${cuid},mode=0400" \
  --secret "traefik-metrics-users,type=mount,uid=${cuid},gid=${cuid},mode=0400" localhost/appliance/traefik:local >/dev/null
sleep 6
python3 - <<'PY'
import socket, ssl, statistics, time, json
ctx = ssl.create_default_context(cafile="/etc/appliance/ca.crt")
REQ = b"GET /v2/health/live HTTP/1.1\r\nHost: api.localhost\r\n\r\n"
def conn(port):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="api.localhost")
    return s
def one(s):
    t = time.perf_counter(); s.sendall(REQ); buf = b""
    while b"\r\n\r\n" not in buf: buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < n: body += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    return time.perf_counter() - t
def newconn(port):
    t = time.perf_counter(); s = conn(port); one(s); s.close(); return time.perf_counter() - t
res = {"socket (443)": {"kept": [], "new": []}, "port forwarding (18443)": {"kept": [], "new": []}}
ports = {"socket (443)": 443, "port forwarding (18443)": 18443}
for rnd in range(10):
    for name, port in ports.items():
        s = conn(port)
        for _ in range(5): one(s)
        res[name]["kept"] += [one(s) for _ in range(200)]
        s.close()
        res[name]["new"] += [newconn(port) for _ in range(20)]
for name, r in res.items():
    for kind, xs in r.items():
        xs.sort()
        print(f"{name:26s} {kind:5s} n={len(xs):5d} p50={xs[len(xs)//2]*1e3:.3f} ms p99={xs[int(len(xs)*0.99)]*1e3:.3f} ms mean={statistics.mean(xs)*1e3:.3f} ms")
PY
$U podman rm -f traefik-before >/dev/null
rm -rf $tmp
