"""workspace/smoke_client.py against the real service: redis-server + `python -m ml_service serve`
over HTTP, and the same app under uvicorn with TLS (a throwaway CA) over HTTPS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from smoke_stack import PASSWORD, USER, Stack, free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("smoke"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    return path


def test_smoke_test_passes_over_http(stack: Stack, password_file: Path, smoke_cli, capsys) -> None:
    rc = smoke_cli.main(
        ["--base-url", f"http://127.0.0.1:{stack.http_port}", "--username", USER,
         "--password-file", str(password_file), "--expect-class", "setosa"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "prediction  setosa" in out.out
    assert "backend numpy-forest" in out.out


def test_smoke_test_passes_over_https_with_ca_file(
    stack: Stack, password_file: Path, smoke_cli, capsys
) -> None:
    rc = smoke_cli.main(
        ["--base-url", f"https://api.localhost:{stack.https_port}",
         "--connect-to", f"127.0.0.1:{stack.https_port}", "--ca-file", str(stack.ca_file),
         "--username", USER, "--password-file", str(password_file), "--json"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert '"class_name": "setosa"' in out.out


def test_untrusted_certificate_fails(stack: Stack, password_file: Path, smoke_cli, capsys) -> None:
    rc = smoke_cli.main(
        ["--base-url", f"https://api.localhost:{stack.https_port}",
         "--connect-to", f"127.0.0.1:{stack.https_port}",
         "--username", USER, "--password-file", str(password_file)]
    )  # fmt: skip
    assert rc == 1
    assert "not trusted" in capsys.readouterr().err


def test_wrong_password_fails(stack: Stack, tmp_path: Path, smoke_cli, capsys) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password at all\n")
    rc = smoke_cli.main(
        ["--base-url", f"http://127.0.0.1:{stack.http_port}", "--username", USER,
         "--password-file", str(wrong)]
    )  # fmt: skip
    assert rc == 1
    assert "POST /token: expected HTTP 200, got 401" in capsys.readouterr().err


def test_wrong_expected_class_fails(stack: Stack, password_file: Path, smoke_cli, capsys) -> None:
    rc = smoke_cli.main(
        ["--base-url", f"http://127.0.0.1:{stack.http_port}", "--username", USER,
         "--password-file", str(password_file), "--expect-class", "virginica"]
    )  # fmt: skip
    assert rc == 1
    assert "expected 'virginica'" in capsys.readouterr().err


def test_unreachable_service_fails(password_file: Path, smoke_cli, capsys) -> None:
    rc = smoke_cli.main(
        ["--base-url", f"http://127.0.0.1:{free_port()}", "--username", USER,
         "--password-file", str(password_file)]
    )  # fmt: skip
    assert rc == 1
    assert "cannot reach" in capsys.readouterr().err
