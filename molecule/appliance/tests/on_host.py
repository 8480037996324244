"""Requests made on the appliance itself (it has Python, no curl): HTTPS to Traefik on the
loopback with the API's name, checked against the appliance CA."""

from __future__ import annotations

import shlex

# Prefix of a command run as the rootless service account with its user manager's environment.
AS_SERVICE = "cd / && runuser -u appliance -- env XDG_RUNTIME_DIR=/run/user/$(id -u appliance) "

# argv: method, path, JSON body (may be empty); prints the response's status code.
_API_STATUS = r"""
import socket, ssl, sys
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ctx = ssl.create_default_context(cafile="/etc/appliance/ca.crt")
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=10),
                     server_hostname="api.localhost") as tls:
    head = (f"{method} {path} HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    tls.sendall(head.encode() + body)
    print(tls.recv(4096).split(b" ", 2)[1].decode(), end="")
"""


def api_status_on_host(host, method: str, path: str, body: str = ""):
    """The command result; its stdout is the HTTP status code of one request through Traefik."""
    args = " ".join(shlex.quote(a) for a in (_API_STATUS, method, path, body))
    return host.run(f"python3 -c {args}")
