"""`noisytail ...`: commands for people (pipelines/ holds the DVC stages)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from noisytail.data.manifest import ManifestError, manifest_digest, read_manifest
from noisytail.data.prepare import summarise
from noisytail.errors import EXIT_STATUS, EXPECTED_ERRORS, one_line


def inspect_manifest(args: argparse.Namespace) -> int:
    """Print a manifest's splits, per-class counts and (benchmarks) noise rate."""
    manifest = read_manifest(args.manifest)
    summary, per_class = summarise(manifest)
    print(json.dumps({"digest": manifest_digest(manifest.table), **summary}, indent=2))
    shown = per_class.sort_values("given", ascending=False, kind="stable")
    print((shown if len(shown) <= 20 else shown.head(10)).to_string(index=False))
    if len(shown) > 20:
        print(f"... and {len(shown) - 10} smaller classes")
    return 0


def draw_gallery(args: argparse.Namespace) -> int:
    """One class's gallery of a cleaning round, on demand (thousands of classes: the clean stage
    draws only the classes that lost the most)."""
    import pandas as pd

    from noisytail.cleaning.gallery import write_gallery

    decisions_file = Path(args.clean_dir) / f"round_{args.round}" / "decisions.parquet"
    if not decisions_file.is_file():
        raise ManifestError(f"{decisions_file} does not exist: run the round's clean stage first "
                            f"(dvc repro clean)")  # fmt: skip
    written = write_gallery(
        pd.read_parquet(decisions_file), read_manifest(args.manifest), args.out, str(args.round),
        per_section=args.per_section, only=args.class_names,
    )  # fmt: skip
    for path in written:
        print(path)
    return 0


def predict_images(args: argparse.Namespace) -> int:
    """The top-5 classes of image files and folders from the registered ensemble (default: its
    champion): printed, or streamed into a CSV with ``--out``."""
    import mlflow

    from noisytail.serving.batch import predict_to_csv
    from noisytail.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    failed = 0
    for row in predict_to_csv(args.model, args.images, args.out, args.batch):
        failed += bool(row["error"])
        if args.out is None:
            ranked = ", ".join(f"{row[f'class_{r}']} {row[f'prob_{r}']:.3f}" for r in range(1, 6)
                               if row.get(f"class_{r}"))  # fmt: skip
            print(f"{row['path']}: {ranked or 'error: ' + row['error']}")
    if args.out is not None:
        print(f"wrote {args.out}" + (f" ({failed} file(s) refused: see its error column)"
                                     if failed else ""))  # fmt: skip
    return EXIT_STATUS if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="noisytail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="summarise a manifest")
    inspect.add_argument("manifest", help="path to a manifest.parquet")
    inspect.set_defaults(run=inspect_manifest)
    gallery = commands.add_parser("gallery", help="draw a cleaning round's gallery of classes")
    gallery.add_argument("--round", required=True, help="the cleaning round (1, 2, ...)")
    gallery.add_argument("--class", dest="class_names", action="append", required=True,
                         metavar="NAME", help="a class name (repeat for more)")  # fmt: skip
    gallery.add_argument("--per-section", type=int, default=24, help="tiles per section")
    gallery.add_argument("--clean-dir", default="data/clean", help="holds round_<r>/")
    gallery.add_argument(
        "--manifest",
        default="data/prepared/manifest.parquet",
        help="a manifest holding every judged sample (paths, true labels)",
    )
    gallery.add_argument("--out", default="gallery", help="folder for the PNG files")
    gallery.set_defaults(run=draw_gallery)
    predict = commands.add_parser("predict", help="top-5 classes of images (registered model)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--out", help="write a CSV (path, class_1, prob_1, ..., error) here")
    predict.add_argument("--batch", type=int, default=64, help="images per request")
    predict.add_argument("--model", default="models:/noisytail-ensemble@champion",
                         help="an MLflow model URI (default: the registry's champion)")  # fmt: skip
    predict.set_defaults(run=predict_images)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (*EXPECTED_ERRORS, ValueError) as error:
        if os.environ.get("NOISYTAIL_DEBUG") == "1":
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
