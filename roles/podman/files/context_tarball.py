#!/usr/bin/env python3
"""Pack one image build context into a byte-for-byte reproducible tar (runs on the controller).

Copying a context file by file costs one remote round trip per file (the ML API's 60-odd
sources took 47-130 s per converge); one reproducible tar is one checksum comparison, so an
unchanged context costs one task and a changed one is replaced whole (no stale files).

Usage: context_tarball.py OUT.tar CONTEXT_DIR < {"context/relative/path": "controller file", ...}

Entries are sorted, owned by 0:0 with mtime 0; files are 0644, or 0755 when the controller
file is executable (entrypoint scripts); directories 0755. Extra files override the
directory's own file of the same path.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path, PurePosixPath


def _entries(context: Path, extra: dict[str, str]) -> dict[str, Path]:
    files = {p.relative_to(context).as_posix(): p for p in context.rglob("*") if p.is_file()}
    for dest, src in extra.items():
        rel = PurePosixPath(dest)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise SystemExit(f"context path must be relative and stay inside the context: {dest!r}")
        files[rel.as_posix()] = Path(src)
    return files


def _dirs(paths: list[str]) -> list[str]:
    return sorted(
        {str(parent) for p in paths for parent in PurePosixPath(p).parents if str(parent) != "."}
    )


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def pack(out: Path, context: Path, extra: dict[str, str]) -> None:
    files = _entries(context, extra)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in _dirs(list(files)):
            tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
        for name in sorted(files):
            data = files[name].read_bytes()
            executable = files[name].stat().st_mode & stat.S_IXUSR
            tar.addfile(
                _info(name, tarfile.REGTYPE, 0o755 if executable else 0o644, len(data)),
                io.BytesIO(data),
            )
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    extra = json.load(sys.stdin)
    if not isinstance(extra, dict):
        raise SystemExit("stdin must be a JSON object: context path -> controller file")
    pack(Path(argv[1]), Path(argv[2]), {str(k): str(v) for k, v in extra.items()})


if __name__ == "__main__":
    main(sys.argv)
