"""The checked-in gRPC stubs are what `make grpc-stubs` generates from the vendored .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = "ml_service/oip/proto/open_inference_grpc.proto"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            PROTO,
        ],
        cwd=REPO,
        check=True,
    )
    stem = PROTO.removesuffix(".proto")
    for suffix in GENERATED:
        fresh = (tmp_path / f"{stem}{suffix}").read_text()
        assert (REPO / f"{stem}{suffix}").read_text() == fresh, (
            f"{stem}{suffix} is stale or edited: run `make grpc-stubs`"
        )
