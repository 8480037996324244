#!/usr/bin/env python3
"""Train, validate, sign and publish an Iris model version for the ML service.

  python workspace/train_model.py keygen --out KEYDIR
  python workspace/train_model.py validate [--data CSV]
  python workspace/train_model.py train --out MODEL_DIR --signing-key KEYDIR/model-signing.key

Exit codes: 0 success, 1 error (e.g. unreadable key), 2 usage error,
3 data failed validation, 4 model failed the quality gate.
Progress goes to stderr, the validation report and summary table to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import ml_service.model  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_service.model.dataset import IRIS_FEATURES, SchemaError
from ml_service.model.signing import generate_keypair, load_private_key
from ml_service.model.training import (
    DataValidationError,
    QualityGateError,
    TrainConfig,
    load_dataset,
    stderr_progress,
    train,
    write_model,
)
from ml_service.model.validation import ValidationThresholds, validate

EXIT_ERROR, EXIT_DATA, EXIT_QUALITY = 1, 3, 4


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"MIN must be below MAX in {text!r}")
    return lo, hi


def _feature_range(text: str) -> tuple[str, tuple[float, float]]:
    name, sep, rng = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FEATURE=MIN:MAX, got {text!r}")
    return name, _range(rng)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _add_data_options(p: argparse.ArgumentParser) -> None:
    d = ValidationThresholds()
    p.add_argument("--data", type=Path, help="CSV with a header row (default: bundled Iris)")
    p.add_argument("--label-column", default="species", help="label column (default: %(default)s)")
    g = p.add_argument_group("data validation thresholds")
    g.add_argument("--min-rows", type=int, default=d.min_rows, help="default: %(default)s")
    g.add_argument(
        "--max-missing-fraction",
        type=_fraction,
        default=d.max_missing_fraction,
        help="per column (default: %(default)s)",
    )
    g.add_argument(
        "--range",
        type=_range,
        default=d.value_range,
        metavar="MIN:MAX",
        help="plausible range of every feature (default: 0:30)",
    )
    g.add_argument(
        "--feature-range",
        type=_feature_range,
        action="append",
        default=[],
        metavar="FEATURE=MIN:MAX",
        help="per-feature override, repeatable",
    )
    g.add_argument(
        "--max-duplicate-fraction",
        type=_fraction,
        default=d.max_duplicate_fraction,
        help="default: %(default)s",
    )
    g.add_argument(
        "--max-conflicting-duplicates",
        type=int,
        default=d.max_conflicting_duplicates,
        help="same features, different labels (default: %(default)s)",
    )
    g.add_argument(
        "--min-class-count", type=int, default=d.min_class_count, help="default: %(default)s"
    )
    g.add_argument(
        "--min-class-ratio",
        type=_fraction,
        default=d.min_class_ratio,
        help="smallest class / largest class (default: %(default)s)",
    )
    g.add_argument(
        "--robust-z",
        type=float,
        default=d.robust_z,
        help="modified z-score flagging an outlier (default: %(default)s)",
    )
    g.add_argument(
        "--max-outlier-fraction",
        type=_fraction,
        default=d.max_outlier_fraction,
        help="rows flagged by robust z (default: %(default)s)",
    )
    g.add_argument(
        "--isolation-score",
        type=float,
        default=d.isolation_score,
        help="IsolationForest anomaly score flagging a row (default: %(default)s)",
    )
    g.add_argument(
        "--max-isolation-fraction",
        type=_fraction,
        default=d.max_isolation_fraction,
        help="rows flagged by IsolationForest (default: %(default)s)",
    )


def _thresholds(args: argparse.Namespace) -> ValidationThresholds:
    unknown = [f for f, _ in args.feature_range if f not in IRIS_FEATURES]
    if unknown:
        raise SystemExit(f"error: --feature-range for unknown feature(s): {', '.join(unknown)}")
    return ValidationThresholds(
        min_rows=args.min_rows,
        max_missing_fraction=args.max_missing_fraction,
        value_range=args.range,
        feature_ranges=dict(args.feature_range),
        max_duplicate_fraction=args.max_duplicate_fraction,
        max_conflicting_duplicates=args.max_conflicting_duplicates,
        min_class_count=args.min_class_count,
        min_class_ratio=args.min_class_ratio,
        robust_z=args.robust_z,
        max_outlier_fraction=args.max_outlier_fraction,
        isolation_score=args.isolation_score,
        max_isolation_fraction=args.max_isolation_fraction,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_model.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    k.add_argument("--out", type=Path, required=True, help="directory for the key pair")
    k.add_argument(
        "--stem",
        default="model-signing",
        help="file name stem: STEM.key (0600) and STEM.pub (default: %(default)s)",
    )

    v = sub.add_parser("validate", help="validate training data only; print the report")
    _add_data_options(v)

    t = sub.add_parser("train", help="validate, train, evaluate, gate and write a signed version")
    t.add_argument("--out", type=Path, required=True, help="model directory (MODEL_DIR)")
    t.add_argument("--signing-key", type=Path, required=True, help="Ed25519 private key (PEM)")
    t.add_argument("--name", default="iris", help="model name (default: %(default)s)")
    _add_data_options(t)
    m = t.add_argument_group("model and quality gate")
    m.add_argument("--n-estimators", type=int, default=100, help="trees (default: %(default)s)")
    m.add_argument("--max-depth", type=int, default=None, help="default: unlimited")
    m.add_argument("--random-state", type=int, default=42, help="default: %(default)s")
    m.add_argument(
        "--test-size", type=float, default=0.2, help="hold-out share (default: %(default)s)"
    )
    m.add_argument("--cv-folds", type=int, default=5, help="default: %(default)s")
    m.add_argument(
        "--min-accuracy",
        type=_fraction,
        default=0.9,
        help="mean cross-validation accuracy at least (default: %(default)s)",
    )
    m.add_argument(
        "--min-holdout-accuracy",
        type=_fraction,
        default=0.85,
        help="hold-out accuracy at least (default: %(default)s)",
    )
    m.add_argument(
        "--max-cv-std",
        type=float,
        default=0.08,
        help="standard deviation of CV accuracy at most (default: %(default)s)",
    )
    return parser


def _summary(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 50 + "+"
    out = [line]
    for key, value in rows:
        out.append(f"| {key:<{width}} | {value:<48} |")
    out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        try:
            private, public, kid = generate_keypair(args.out, args.stem)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"private key: {private} (mode 0600; keep it off the server)")
        print(f"public key:  {public} (copy into the service's trusted keys directory)")
        print(f"key id:      {kid}")
        return 0

    thresholds = _thresholds(args)
    try:
        dataset = load_dataset(args.data, IRIS_FEATURES, args.label_column)
    except (SchemaError, OSError) as exc:
        print(f"error: cannot use the training data: {exc}", file=sys.stderr)
        return EXIT_DATA

    if args.command == "validate":
        report = validate(dataset, thresholds)
        print(report.format())
        return 0 if report.ok else EXIT_DATA

    cfg = TrainConfig(
        name=args.name,
        n_estimators=args.n_estimators,
        max_depth=args.max_depth,
        random_state=args.random_state,
        test_size=args.test_size,
        cv_folds=args.cv_folds,
        min_accuracy=args.min_accuracy,
        min_holdout_accuracy=args.min_holdout_accuracy,
        max_cv_std=args.max_cv_std,
        thresholds=thresholds,
    )
    if not args.signing_key.is_file():
        print(
            f"error: signing key {args.signing_key} not found (create one with keygen)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        load_private_key(args.signing_key)  # fail before minutes of training, not after
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: unusable signing key {args.signing_key}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        result = train(dataset, cfg, stderr_progress)
    except DataValidationError as exc:
        print(exc.report.format())
        print(f"error: {exc}; no model written", file=sys.stderr)
        return EXIT_DATA
    except QualityGateError as exc:
        print(f"error: {exc}; no model written", file=sys.stderr)
        return EXIT_QUALITY
    print(result.report.format())
    try:
        path = write_model(result, cfg, args.out, args.signing_key, stderr_progress)
    except (OSError, ValueError) as exc:
        print(f"error: cannot write the model: {exc}", file=sys.stderr)
        return EXIT_ERROR
    m = result.metrics
    print()
    print(
        _summary(
            [
                ("model", f"{cfg.name} {path.name}"),
                ("directory", str(path)),
                ("data", f"{dataset.source} ({dataset.n_rows} rows)"),
                ("data sha256", dataset.sha256[:48]),
                ("trees", str(cfg.n_estimators)),
                (
                    "hold-out accuracy",
                    f"{m['holdout_accuracy']:.4f} (gate >= {cfg.min_holdout_accuracy:g})",
                ),
                ("hold-out F1 (macro)", f"{m['holdout_f1_macro']:.4f}"),
                (
                    "CV accuracy",
                    f"{m['cv_accuracy_mean']:.4f} +/- {m['cv_accuracy_std']:.4f} "
                    f"({cfg.cv_folds} folds, gate >= {cfg.min_accuracy:g})",
                ),
                ("confusion (rows=true)", " ".join(str(r) for r in result.confusion)),
                ("took", f"{result.seconds:.2f} s"),
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
