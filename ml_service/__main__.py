"""Command line: ``python -m ml_service [serve|check-config|users|audit|keys] ...``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path


def _fail(message: str, code: int = 2) -> int:
    print(f"ml_service: {message}", file=sys.stderr)
    return code


def _preflight():  # type: ignore[no-untyped-def]
    from .settings import ConfigError, load_settings
    from .tokens import TokenService
    from .users import UserFileError, check_users_file

    settings = load_settings()
    TokenService(settings)  # the signing key parses and is ES256
    try:
        check_users_file(settings.users_file)
    except UserFileError as exc:
        raise ConfigError(f"ML_SERVICE_USERS_FILE: {exc}") from None
    return settings


def cmd_serve(_: argparse.Namespace) -> int:
    from .settings import ConfigError

    try:
        settings = _preflight()
    except ConfigError as exc:
        return _fail(
            "refusing to start, configuration problems:\n  " + str(exc).replace("\n", "\n  ")
        )

    # Must be set before any worker imports prometheus_client.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="ml-service-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()

    import uvicorn

    from .draining_http import DrainingHttpToolsProtocol
    from .logs import log_config, setup

    setup(settings.log_level)
    uvicorn.run(
        "ml_service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        log_config=log_config(settings.log_level),
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        loop="uvloop",
        http=DrainingHttpToolsProtocol,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_check_config(_: argparse.Namespace) -> int:
    from .settings import ConfigError

    try:
        _preflight()
    except ConfigError as exc:
        return _fail("configuration problems:\n  " + str(exc).replace("\n", "\n  "))
    print("configuration ok")
    return 0


def _users_file(args: argparse.Namespace) -> Path:
    path = args.file or os.environ.get("ML_SERVICE_USERS_FILE")
    if not path:
        raise SystemExit(_fail("give --file or set ML_SERVICE_USERS_FILE"))
    return Path(path)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise SystemExit(_fail("no password on stdin"))
        return password
    if not sys.stdin.isatty():
        raise SystemExit(_fail("no terminal for the password prompt: use --password-stdin"))
    first = getpass.getpass("New password: ")
    if first != getpass.getpass("Repeat password: "):
        raise SystemExit(_fail("the passwords differ"))
    return first


def cmd_users(args: argparse.Namespace) -> int:
    from .users import (
        UserFileError,
        add_user,
        list_users,
        make_hasher,
        remove_user,
        set_password,
        set_role,
    )

    path = _users_file(args)
    try:
        if args.users_command == "add":
            add_user(path, args.name, args.role, _read_password(args), make_hasher())
            print(f"added {args.name} ({args.role})")
        elif args.users_command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name}")
        elif args.users_command == "passwd":
            set_password(path, args.name, _read_password(args), make_hasher())
            print(f"password of {args.name} changed; older tokens are no longer accepted")
        elif args.users_command == "role":
            set_role(path, args.name, args.role)
            print(f"{args.name} is now {args.role}; older tokens are no longer accepted")
        else:
            for name, role, created in list_users(path):
                print(f"{name}\t{role}\t{created}")
    except UserFileError as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(f"{path}: {exc.strerror}", 1)
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from .audit import verify_files
    from .audit_anchors import check_anchors, parse_anchors, rotated_series

    paths = [Path(p) for p in args.files]
    if args.rotated:
        paths = [series_file for path in paths for series_file in rotated_series(path)]
        if not paths:
            return _fail(f"no audit files at {', '.join(args.files)}", 2)
    try:
        result = verify_files(paths, allow_continuation=args.continuation)
        if not result.ok or args.anchors is None:
            print(result.message)
            return 0 if result.ok else 1
        if args.anchors == "-":
            anchors = parse_anchors(sys.stdin)
        else:
            anchors = parse_anchors(Path(args.anchors).read_text().splitlines())
        anchored = check_anchors(paths, anchors)
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}", 2)
    if not anchored.ok:
        print(anchored.message)
        return 1
    pruned = f", {anchored.before_start} older than the kept files" if anchored.before_start else ""
    print(f"{result.message}; {anchored.message}{pruned}")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .tokens import generate_keypair

    kid, key, pub = generate_keypair(Path(args.directory))
    print(f"kid {kid}\nsigning key (keep secret): {key}\nverification key: {pub}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml_service", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the API (the default)").set_defaults(func=cmd_serve)
    sub.add_parser("check-config", help="validate the configuration and exit").set_defaults(
        func=cmd_check_config
    )

    users = sub.add_parser("users", help="manage the users file")
    users.add_argument("--file", help="users file (default: $ML_SERVICE_USERS_FILE)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["admin", "predictor", "viewer"])
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    remove = users_sub.add_parser("remove", help="remove a user (their tokens stop working)")
    remove.add_argument("name")
    passwd = users_sub.add_parser("passwd", help="change a password (older tokens stop working)")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    role = users_sub.add_parser("role", help="change a role (older tokens stop working)")
    role.add_argument("name")
    role.add_argument("--role", required=True, choices=["admin", "predictor", "viewer"])
    users_sub.add_parser("list", help="list users and roles")
    users.set_defaults(func=cmd_users)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="verify the hash chain (files oldest first)")
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument(
        "--continuation",
        action="store_true",
        help="accept a first record after seq 0 (a rotated file checked without the older ones)",
    )
    verify.add_argument(
        "--rotated",
        action="store_true",
        help="each FILE stands for its rotated series too (FILE.N[.gz] oldest first, then FILE)",
    )
    verify.add_argument(
        "--anchors",
        metavar="FILE",
        help="chain heads recorded by root ('seq=N hash=H' lines; - for stdin): "
        "a rewritten or cut log no longer matches them",
    )
    verify.set_defaults(func=cmd_audit_verify)

    keys = sub.add_parser("keys", help="JWT signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="create an ES256 key pair named by its key id")
    gen.add_argument("directory", metavar="DIR")
    gen.set_defaults(func=cmd_keys_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func = getattr(args, "func", cmd_serve)
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
