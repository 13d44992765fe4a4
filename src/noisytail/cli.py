"""`noisytail ...`: commands for people (pipelines/ holds the DVC stages)."""

from __future__ import annotations

import argparse
import json
import sys

from noisytail.data.manifest import ManifestError, manifest_digest, read_manifest
from noisytail.data.prepare import summarise


def inspect_manifest(args: argparse.Namespace) -> int:
    """Print a manifest's splits, per-class counts and (benchmarks) noise rate."""
    manifest = read_manifest(args.manifest)
    summary = {"digest": manifest_digest(manifest.table), **summarise(manifest)}
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="noisytail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="summarise a manifest")
    inspect.add_argument("manifest", help="path to a manifest.parquet")
    inspect.set_defaults(run=inspect_manifest)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ManifestError as error:
        print(f"noisytail: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
