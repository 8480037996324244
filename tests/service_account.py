"""Commands as the appliance's rootless service account on a test machine (testinfra), with its
user manager's environment, so `podman` and `systemctl --user` see the service's own state."""

from __future__ import annotations

import shlex

SERVICE_USER = "appliance"
SERVICE_HOME = "/var/lib/appliance"


def service_command(uid: int, command: str, stdin: str | None = None) -> str:
    """The shell line that runs COMMAND as the service account (uid UID), fed STDIN if given."""
    env = f"env XDG_RUNTIME_DIR=/run/user/{uid} HOME={SERVICE_HOME}"
    wrapped = f"sudo -n -u {SERVICE_USER} {env} sh -c {shlex.quote(command)}"
    if stdin is not None:
        wrapped = f"printf %s {shlex.quote(stdin)} | {wrapped}"
    return f"cd / && {wrapped}"
