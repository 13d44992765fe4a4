"""The seed's Table 1 for any profile: what each step of the method adds, test mean class error
and the change from the row above, every choice made on val.

Read from one `dvc repro` (metrics/, data/test_time/, tuned.yaml) and, for the plain timm
recipe on the noisy and on the true labels, from benchmarks/results/baseline.json (same data,
same budget, the run's benchmark `seed`; seed 0 writes ablation.json, seed s
ablation_seed<s>.json). Rows follow the pipeline's order: the member `--member` (default: the
first in params.yaml) is trained on the last round's data, fine-tuned at high resolution,
given a balanced classifier, then tau and TTA; then a 3-member and the 8-member ensemble.

Beside it, per member, what each of the seed's test-time and hi-res components does on val (and
test, only reported): hi-res against full (and the per-epoch val curve at each size), tau as tuned
against the classifier as trained, and every FixRes scale x TTA mode against the plain centre view
(tau off), over all val rows (tune decided on the rows the last round kept): the measured reason
where a component does not help.

The noise cost (``--true-labels-run DIR``): DIR is a finished run of the same pipeline on the true
labels of the same images (these params with ``benchmark.eta: 0``; checked on the prepared
manifests and image files); each row gets its figures there and ``noise_cost`` = test MCE on the
noisy labels minus on the true ones.

    make run && make ensemble
    python benchmarks/ablation.py
    python benchmarks/ablation.py --params profiles/pretrained.yaml \
        --baseline baseline_pretrained --name ablation_pretrained   # in a pretrained run
    python benchmarks/ablation.py ... --true-labels-run ../eta0   # a clone run at eta 0
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, print_table, write_result

from noisytail.config import load_params
from noisytail.data.manifest import Manifest, read_manifest
from noisytail.members import ranked_on_val
from noisytail.metrics import classification_report
from noisytail.test_time.cache import TTA_MODES, load_views, split_rows, tta_top_k
from noisytail.test_time.scoring import ensemble_rows, read_rows


@dataclass(frozen=True)
class RunOutputs:
    """What one finished `dvc repro` left that the table reads, each file read once."""

    path: Path
    params: dict
    tuned: dict  # tuned.yaml: per-member tau / TTA / weights and the keep decisions
    ensemble: dict  # metrics/ensemble_rows.csv: val and test of each member step and ensemble
    manifest: Manifest  # data/prepared/manifest.parquet
    stored: dict  # per member and scale, its test-time view cache

    @classmethod
    def load(cls, run: Path, params: dict) -> RunOutputs:
        scales = params["test_time"]["scales"]
        return cls(
            run, params, load_params(run / "tuned.yaml"),
            read_rows(run / "metrics/ensemble_rows.csv"),
            read_manifest(run / "data/prepared/manifest.parquet"),
            {m: load_views(run / "data/test_time" / m, scales) for m in params["members"]},
        )  # fmt: skip

    def member_metrics(self, name: str, step: str) -> dict:
        return json.loads((self.path / f"metrics/members/{name}/{step}.json").read_text())

    def val_curve(self, name: str, step: str) -> list[float]:
        """A member step's val mean class error after each of its epochs."""
        done = json.loads((self.path / f"models/members/{name}/{step}/done.json").read_text())
        return [round(h["val_mean_class_error"], 2) for h in done["history"]]


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_true_label_run(run: Path, params: dict, manifest: Manifest) -> list[str]:
    """The run on the true labels must hold this run's very images and splits, every training
    label its true one: checked on what the runs prepared (their manifests and a sample of the
    image files), not on their params. Returns the settings that differ between the two
    params.yaml files (a code version's new key, say), printed and kept for the record."""
    other = load_params(run / "params.yaml")
    mine, theirs = flat(params), flat(other)
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    try:
        prepared = read_manifest(run / "data/prepared/manifest.parquet")
    except (OSError, ValueError) as error:
        raise SystemExit(f"{run}: no prepared manifest to compare ({error})") from error
    if "true_label" not in prepared.table or "true_label" not in manifest.table:
        raise SystemExit(f"{run}: the manifests keep no true_label column: no truth to compare")
    train = prepared.split("train")
    if not (train["label"] == train["true_label"]).all():
        raise SystemExit(f"{run}: its training labels are not the true ones (is its eta 0?)")
    columns = ["sample_id", "path", "split", "true_label"]

    def table(m: Manifest):
        return m.table[columns].sort_values("sample_id").reset_index(drop=True)

    if not table(prepared).equals(table(manifest)):
        raise SystemExit(f"{run}: its prepared images, splits or true labels are not this run's")
    for path in manifest.table["path"].sample(min(64, len(manifest.table)), random_state=0):
        if prepared.resolve(path).read_bytes() != manifest.resolve(path).read_bytes():
            raise SystemExit(f"{run}: image {path} differs from this run's")
    print(f"{run}: the same images; settings that differ: {', '.join(differ)}", file=sys.stderr)
    return differ


def component_effects(run: RunOutputs) -> list[dict]:
    """Per member: each component's val (and test) mean class error against what it replaces.

    ``tta_best`` is the lowest of the scale x mode grid on val, so its change is never positive
    (a best-of-12 on the same rows); ``tau_kept`` / ``tta_kept`` are the pipeline's decisions
    under the keep rule (a win by more than 2 paired standard errors), the honest count."""
    effects, stored, decisions = [], run.stored, run.tuned["decisions"]
    for name in run.params["members"]:
        full, hires = run.member_metrics(name, "full"), run.member_metrics(name, "hires")
        grid: dict[str, dict[str, float]] = {}
        for scale, cache in stored[name].items():
            splits = {split: split_rows(cache, split) for split in ("val", "test")}
            for mode in TTA_MODES:
                grid[f"{scale}/{mode}"] = {
                    split: round(classification_report(
                        tta_top_k(rows, None, mode)[0][:, 0], rows["label"],
                        run.manifest.num_classes,
                    )["mean_class_error"], 2)
                    for split, rows in splits.items()
                }  # fmt: skip
        plain = grid[f"{next(iter(stored[name]))}/none"]
        best = min(grid, key=lambda k: (grid[k]["val"], k != f"{next(iter(stored[name]))}/none"))
        tau = decisions[name]["tau"]
        effects.append({
            "member": name,
            "hires_val_change": round(hires["val"]["mean_class_error"]
                                      - full["val"]["mean_class_error"], 2),
            "hires_test_change": round(hires["test"]["mean_class_error"]
                                       - full["test"]["mean_class_error"], 2),
            "full_val_curve": run.val_curve(name, "full"),
            "hires_val_curve": run.val_curve(name, "hires"),
            "tau": tau["tuned"], "tau_val_change": tau["val_difference"], "tau_kept": tau["kept"],
            "tta_best": best, "tta_val_change": round(grid[best]["val"] - plain["val"], 2),
            "tta_test_change": round(grid[best]["test"] - plain["test"], 2),
            "tta_kept": decisions[name]["tta"]["kept"], "tta_grid": grid,
        })  # fmt: skip
    return effects


def row(step: str, val: float | None, test: float) -> dict:
    """One line of the table (val is None where the step has no val figure)."""
    return {"step": step, "val_mce": None if val is None else round(val, 2),
            "test_mce": round(test, 2)}  # fmt: skip


def pipeline_rows(run: RunOutputs, member: str) -> list[dict]:
    """Table 1's rows from one run's outputs: round 1's model, ``member`` step by step on the last
    round's data, tau, TTA, the 3 members best on val and the tuned ensemble (val and test)."""
    params, ensemble, manifest = run.params, run.ensemble, run.manifest
    names = list(params["members"])
    counts = manifest.class_counts("train", "true_label").to_numpy()
    scales = params["test_time"]["scales"]
    last_round = params["cleaning"]["rounds"][-1]["round"]

    # A 3-member ensemble: the three best members on val (after tau and TTA), equal weights.
    three = ranked_on_val({m: ensemble[f"{m}/tau+tta"]["val"]["mean_class_error"]
                           for m in names})[:3]  # fmt: skip
    small = {}
    for split in ("val", "test"):
        views = {m: {s: split_rows(c, split) for s, c in run.stored[m].items()} for m in names}
        labels = views[names[0]][f"{scales[0]:g}"]["label"]
        rows, _ = ensemble_rows(views, run.tuned["members"], f"{scales[0]:g}",
                                params["tuning"]["top"], {"three": three})  # fmt: skip
        small[split] = classification_report(rows["three"][:, 0], labels, manifest.num_classes,
                                             counts)  # fmt: skip

    def from_members(step: str, file: str) -> dict:
        m = run.member_metrics(member, file)
        return row(step, m["val"]["mean_class_error"], m["test"]["mean_class_error"])

    def from_ensemble(step: str, key: str) -> dict:
        m = ensemble[key]
        return row(step, m["val"]["mean_class_error"], m["test"]["mean_class_error"])

    round_1 = json.loads((run.path / "metrics/round_1.json").read_text())
    return [
        row("noisytail recipe, noisy labels (round 1's model)", None,
            round_1["test"]["mean_class_error"]),
        from_members(f"+ cleaning: {member} on round {last_round}'s data", "full"),
        from_members("+ hi-res fine-tune", "hires"),
        from_members("+ balanced classifier" + (
            " (from full: hi-res made val worse)"
            if run.member_metrics(member, "balance").get("start") == "full" else ""), "balance"),
        from_ensemble("+ tau", f"{member}/tau"),
        from_ensemble("+ TTA", f"{member}/tau+tta"),
        row(f"+ 3-member ensemble ({', '.join(three)})", small["val"]["mean_class_error"],
            small["test"]["mean_class_error"]),
        from_ensemble(f"+ all {len(names)} members (weights tuned on val)", "ensemble"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--member", default="")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--baseline", default="baseline", help="results/<name>.json: plain recipe")
    parser.add_argument("--name", default="ablation", help="results/<name>[_seed<s>].json")
    parser.add_argument(
        "--true-labels-run",
        type=Path,
        default=None,
        help="a finished run of these params with benchmark.eta: 0: the noise cost",
    )
    args = parser.parse_args()  # fmt: skip

    params = load_params(args.params)
    names = list(params["members"])
    member = args.member or names[0]
    seed = int(params["seed"])
    baseline = json.loads((RESULTS / f"{args.baseline}.json").read_text())["summary"][str(seed)]
    run = RunOutputs.load(Path("."), params)
    ensemble = run.ensemble
    rows = [
        row("plain timm recipe, noisy labels", None, baseline["plain_noisy"]),
        *pipeline_rows(run, member),
        row("plain timm recipe, TRUE labels", None, baseline["plain_oracle"]),
    ]
    previous = None
    for r in rows[:-1]:
        if r["step"].endswith("made val worse)"):  # the balance step started from full
            previous = next(x["test_mce"] for x in rows if x["step"].startswith("+ cleaning"))
        r["delta"] = None if previous is None else round(r["test_mce"] - previous, 2)
        previous = r["test_mce"]
    rows[-1]["delta"] = None
    summary: dict = {}
    if args.true_labels_run is not None:  # the same pipeline, row by row, on the true labels
        differ = check_true_label_run(args.true_labels_run, params, run.manifest)
        true_params = load_params(args.true_labels_run / "params.yaml")
        true_rows = pipeline_rows(RunOutputs.load(args.true_labels_run, true_params), member)
        for r, t in zip(rows[1:-1], true_rows, strict=True):  # the same steps in the same order
            if t["step"] != r["step"]:  # e.g. another 3 best on val, or balance from hi-res there
                r["true_labels_step"] = t["step"]
            r["true_labels_val_mce"], r["true_labels_test_mce"] = t["val_mce"], t["test_mce"]
            r["noise_cost"] = round(r["test_mce"] - t["test_mce"], 2)
        summary["true_labels_run"] = {"run": str(args.true_labels_run), "other_settings": differ}
    print_table(rows)
    best = ranked_on_val({m: ensemble[f"{m}/tau+tta"]["val"]["mean_class_error"] for m in names})[0]
    full = ensemble["ensemble"]["test"]["mean_class_error"]
    summary.update({
        "plain_noisy": baseline["plain_noisy"],
        "full_pipeline": full,
        "best_member": ensemble[f"{best}/tau+tta"]["test"]["mean_class_error"],
        "best_member_name": best,
        "plain_oracle": baseline["plain_oracle"],
        "moonshot_met": full < baseline["plain_oracle"],
    })  # fmt: skip
    if args.true_labels_run is not None:  # MCE(noisy) - MCE(true), the full pipeline, test
        summary["full_pipeline_true_labels"] = rows[-2]["true_labels_test_mce"]
        summary["noise_cost"] = rows[-2]["noise_cost"]
        summary["noise_cost_under_1"] = rows[-2]["noise_cost"] < 1.0
    effects = component_effects(run)
    print_table([{k: v for k, v in e.items() if not k.endswith(("grid", "curve"))}
                 for e in effects])  # fmt: skip
    summary["members_helped_on_val"] = {  # hires: lower val (its step is built on only then)
        "hires": sum(e["hires_val_change"] < 0 for e in effects),
        "tau_kept": sum(e["tau_kept"] for e in effects),
        "tta_kept": sum(e["tta_kept"] for e in effects),
    }
    summary["members_lower_on_val_in_sample"] = {  # best of the study / grid: optimistic
        component: sum(e[f"{component}_val_change"] < 0 for e in effects)
        for component in ("tau", "tta")
    }
    summary["members"] = len(effects)
    print(json.dumps(summary, indent=1))
    write_result(args.name if seed == 0 else f"{args.name}_seed{seed}", rows, summary=summary,
                 member=member, seed=seed, params=args.params, components=effects)  # fmt: skip


if __name__ == "__main__":
    main()
