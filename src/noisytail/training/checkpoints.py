"""Run folders: epoch checkpoints written whole or not at all, the identity a checkpoint may be
resumed under, and the fingerprint of a run's inputs (configs, training rows, seed, code)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator

from noisytail.data.manifest import manifest_digest


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete epoch checkpoint (incomplete ones are written under a .tmp name)."""
    done = sorted(p for p in folder.glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def copy_network(source: Path, target: Path) -> None:
    """Copy a saved network (weights and its .json) so that ``target`` is never half written."""
    for suffix in (".json", ".safetensors"):
        partial = target.with_name(f"partial_{target.stem}{suffix}")
        shutil.copyfile(source.with_suffix(suffix), partial)
        partial.replace(target.with_suffix(suffix))


def run_identity(inputs: str, processes: int) -> dict[str, str | int]:
    """What a checkpoint may be resumed under: the same inputs, the same number of processes (it
    sets the global batch, the learning rate and the data sharding) and the same libraries."""
    import albumentations
    import timm

    return {"inputs": inputs, "processes": processes, "torch": torch.__version__,
            "timm": timm.__version__, "albumentations": albumentations.__version__}  # fmt: skip


def claim_run_dir(out_dir: Path, identity: dict) -> None:
    """Keep ``out_dir``'s checkpoints only if a run of this ``identity`` made them; otherwise
    start afresh and say what changed."""
    stamp = out_dir / "fingerprint"
    if stamp.exists():
        try:
            before = json.loads(stamp.read_text())
        except json.JSONDecodeError:  # the plain-text stamp of older versions
            before = {"inputs": stamp.read_text()}
        changed = [k for k in identity if before.get(k) != identity[k]]
        if changed:
            why = ", ".join(
                "inputs (data, configs or code)" if k == "inputs"
                else f"{k} {before.get(k)} -> {identity[k]}" for k in changed
            )  # fmt: skip
            print(f"{out_dir}: {why} changed since the last run; starting afresh")
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
            stale = ["done.json", "model.safetensors", "model.json", "mlflow_run_id",
                     "member_run_id", "model_best.safetensors", "model_best.json",
                     "registered.json"]  # fmt: skip
            for path in [*(out_dir / n for n in stale), *out_dir.glob("model_epoch_*")]:
                path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(identity, sort_keys=True))


def save_checkpoint(
    accelerator: Accelerator, folder: Path, epoch: int, history: list, keep: int
) -> Path:
    """``accelerator.save_state`` under a temporary name, renamed once complete."""
    final = folder / f"epoch_{epoch:04d}"
    partial = folder / f"epoch_{epoch:04d}.tmp"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "history.json").write_text(json.dumps(history))
        partial.rename(final)
        for old in sorted(p for p in folder.glob("epoch_*") if not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# Imported by the training code, but changing nothing it learns: messages, progress bars, MLflow,
# and the reading of imports that finds the rest.
NOT_WEIGHTS = ("errors.py", "progress.py", "tracking.py", "dependencies.py")
# Settings that change how fast a run goes or what it keeps on disk, not its weights.
NOT_WEIGHT_SETTINGS = ("workers", "keep_checkpoints")


def training_code() -> list[Path]:
    """The library files a training run executes: the recipes and everything they import (read
    from the source, ``noisytail.dependencies``), less ``NOT_WEIGHTS``."""
    from noisytail.dependencies import PACKAGE, import_closure

    recipes = Path(__file__).with_name("recipes.py")
    closure = sorted({recipes, *import_closure([recipes])})
    return [f for f in closure if f.relative_to(PACKAGE).as_posix() not in NOT_WEIGHTS]


def code_digest() -> str:
    """A hash of ``training_code``: a run folder left by other training code is not resumed,
    and a change elsewhere (prediction, cleaning, test time, tracking) retrains nothing."""
    from noisytail.dependencies import PACKAGE

    digest = hashlib.sha256()
    for source in training_code():
        digest.update(source.relative_to(PACKAGE).as_posix().encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """A file's content hash (the weights a fine-tune starts from: by content, not path)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()[:16]


def weight_settings(config) -> dict:
    """A training config's settings that change its weights (``NOT_WEIGHT_SETTINGS`` left out)."""
    return {k: v for k, v in asdict(config).items() if k not in NOT_WEIGHT_SETTINGS}


def run_fingerprint(*parts) -> str:
    """A hash of a run's inputs: configs, the training rows (ids and labels), the seed and the
    library's code (under DVC, a code change re-runs the stage: it must then really retrain)."""
    text = [code_digest()]
    for part in parts:
        if isinstance(part, pd.DataFrame):
            text.append(manifest_digest(part[["sample_id", "label"]]))
        else:
            text.append(json.dumps(asdict(part) if is_dataclass(part) else part, sort_keys=True))
    return hashlib.sha256("|".join(text).encode()).hexdigest()[:16]
