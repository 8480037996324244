"""How the podman role ships an image build context (roles/podman/tasks/image_context.yml and
roles/podman/files/context_tarball.py), run on the controller itself against a temporary
"service account home": the tar is byte-for-byte reproducible, an unchanged context changes
nothing, a changed one is replaced whole (a removed source is gone from the host), a deleted
context comes back, and check mode reports the change without touching the host."""

from __future__ import annotations

import getpass
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from local_playbook import role_playbook, run_local_playbook

REPO = Path(__file__).resolve().parents[2]
PODMAN = REPO / "roles/podman"
SCRIPT = PODMAN / "files/context_tarball.py"


def _pack(out: Path, context: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(context)],
        input=json.dumps(extra),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A context directory (with an executable entrypoint) and two extra files."""
    root = tmp_path / "containers" / "demo"
    root.mkdir(parents=True)
    (root / "Containerfile").write_text("FROM scratch\n")
    entry = root / "entrypoint.sh"
    entry.write_text("#!/bin/sh\n")
    entry.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("a = 1\n")
    (src / "b.py").write_text("b = 2\n")
    return root, {"src/pkg/a.py": str(src / "a.py"), "src/pkg/b.py": str(src / "b.py")}


def test_the_tar_is_reproducible_and_normalised(tmp_path: Path, sources) -> None:
    root, extra = sources
    first, second = tmp_path / "1.tar", tmp_path / "2.tar"
    assert _pack(first, root, extra).returncode == 0
    (root / "Containerfile").touch()  # a new mtime must not change the bytes
    assert _pack(second, root, dict(reversed(list(extra.items())))).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == [
        "src",
        "src/pkg",
        "Containerfile",
        "entrypoint.sh",
        "src/pkg/a.py",
        "src/pkg/b.py",
    ]
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, 0)}
    assert members["entrypoint.sh"].mode == 0o755
    assert members["Containerfile"].mode == 0o644
    assert members["src/pkg"].isdir() and members["src/pkg"].mode == 0o755


def test_an_extra_file_overrides_the_directory_and_no_path_escapes(tmp_path: Path, sources) -> None:
    root, extra = sources
    out = tmp_path / "o.tar"
    assert _pack(out, root, {"Containerfile": extra["src/pkg/a.py"]}).returncode == 0
    with tarfile.open(out) as tar:
        assert tar.extractfile("Containerfile").read() == b"a = 1\n"
    for bad in ("../x", "/etc/x", "a/../../x"):
        run = _pack(tmp_path / "bad.tar", root, {bad: extra["src/pkg/a.py"]})
        assert run.returncode != 0 and "inside the context" in run.stderr, bad
    assert not (tmp_path / "bad.tar").exists()


def _ship(
    tmp_path: Path, root: Path, extra: dict[str, str], *, check: bool = False
) -> dict[str, bool]:
    """Run image_context.yml through include_role; return which of its host tasks changed."""
    playbook = tmp_path / "ship.yml"
    playbook.write_text(
        role_playbook(
            PODMAN,
            "Ship a build context",
            f"""
  tasks:
    - name: Ship it
      ansible.builtin.include_role:
        name: {PODMAN}
        tasks_from: image_context
    - name: Say what changed
      ansible.builtin.debug:
        msg: "SHIPPED {{{{ {{'copied': __podman_image_tarball is changed,
                           'unpacked': __podman_image_unpack is changed}} | to_json }}}}"
""",
        )
    )
    home = tmp_path / "home"
    run = run_local_playbook(
        playbook,
        {
            "ansible_become": False,
            "podman_user": getpass.getuser(),
            "podman_image_name": root.name,
            "podman_image_context_root": str(root.parent),
            "__podman_image_context": str(home / "containers" / root.name),
            "__podman_image_tar_files": extra,
        },
        *(["--check"] if check else []),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    shipped = re.search(r"SHIPPED (\{[^}]*\})", run.stdout)
    assert shipped, run.stdout[-3000:]
    return json.loads(shipped.group(1))


def test_the_role_ships_a_changed_context_whole_and_nothing_otherwise(
    tmp_path: Path, sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, extra = sources
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))  # where the controller's tar is made
    (tmp_path / "home" / "containers").mkdir(parents=True)
    context = tmp_path / "home" / "containers" / root.name
    # The tar's modes, not the umask (077 after hardening), must reach the image: a context
    # file 0600 there is unreadable to the container's user. (As root, tar keeps the modes
    # anyway; the test discriminates when run as another user.)
    umask = os.umask(0o077)
    try:
        assert _ship(tmp_path, root, extra) == {"copied": True, "unpacked": True}
    finally:
        os.umask(umask)
    assert (context / "src/pkg/b.py").read_text() == "b = 2\n"
    assert stat.S_IMODE((context / "src/pkg/b.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((context / "src/pkg").stat().st_mode) == 0o755
    assert stat.S_IMODE((context / "entrypoint.sh").stat().st_mode) == 0o755
    assert _ship(tmp_path, root, extra) == {"copied": False, "unpacked": False}

    fewer = {k: v for k, v in extra.items() if not k.endswith("b.py")}
    assert _ship(tmp_path, root, fewer, check=True) == {"copied": True, "unpacked": False}
    assert (context / "src/pkg/b.py").exists(), "check mode changed the host"
    assert _ship(tmp_path, root, fewer) == {"copied": True, "unpacked": True}
    assert not (context / "src/pkg/b.py").exists(), "a removed source stayed in the context"
    assert not list(context.parent.glob("*.new"))

    subprocess.run(["rm", "-rf", str(context)], check=True)
    assert _ship(tmp_path, root, fewer) == {"copied": False, "unpacked": True}
    assert (context / "src/pkg/a.py").read_text() == "a = 1\n"
    assert not list(spool.glob("*-context")), "the controller's temporary directory stayed"
