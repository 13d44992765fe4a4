"""The layout holds: stage deps are what each script imports, fingerprints hash what changes the
weights, the library never imports the stages, and modules stay small."""

import ast

import yaml
from conftest import REPO

from noisytail.dependencies import PACKAGE, import_closure, stage_deps, trivial
from noisytail.training.checkpoints import training_code


def test_every_stage_depends_on_the_library_code_its_script_imports():
    """dvc.yaml's src/noisytail deps equal what `make deps` reads off the imports: a fix in a
    module a stage runs re-runs it; nothing else does (the whole package only where it ships)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    wanted = stage_deps(REPO / "dvc.yaml")
    assert set(wanted) == {n for n, s in stages.items() if "pipelines/" in s.get("do", s)["cmd"]}
    for name, deps in wanted.items():
        listed = [d for d in stages[name].get("do", stages[name])["deps"]
                  if d.startswith("src/noisytail")]  # fmt: skip
        assert listed == deps, f"{name}: run `make deps` (dvc.yaml has {listed}, wants {deps})"
    assert wanted["register"] == ["src/noisytail"]  # it ships the package
    for training in ("train", "member_full", "member_hires", "member_balance"):
        assert not any("test_time" in d or "cleaning" in d for d in wanted[training])


def test_the_fingerprint_hashes_the_training_code_and_nothing_else():
    names = {f.relative_to(PACKAGE).as_posix() for f in training_code()}
    assert {"training/engine.py", "training/recipes.py", "models/network.py",
            "data/transforms.py", "data/samplers.py", "config/training.py"} <= names  # fmt: skip
    outside = {"tracking.py", "progress.py", "prediction.py", "config/params.py"}
    assert not names & outside
    assert not any(n.startswith(("test_time/", "cleaning/", "serving/")) for n in names)


def test_type_hint_imports_are_not_followed(tmp_path):
    import shutil

    package = tmp_path / "noisytail"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "script.py"
    script.write_text("from typing import TYPE_CHECKING\nfrom noisytail import metrics\n"
                      "if TYPE_CHECKING:\n    from noisytail.models import network\n")  # fmt: skip
    found = {f.name for f in import_closure([script])}
    assert "metrics.py" in found and "network.py" not in found


def test_the_library_never_imports_the_stages_and_inits_only_document():
    for file in PACKAGE.rglob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("pipelines"), file
        if file.name == "__init__.py" and file.parent != PACKAGE / "config":
            assert trivial(file), f"{file}: keep package __init__ files to a docstring"


def test_modules_stay_small():
    sizes = {f.relative_to(PACKAGE).as_posix(): len(f.read_text().splitlines())
             for f in PACKAGE.rglob("*.py")}  # fmt: skip
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_make_deps_rewrites_only_the_library_deps_and_keeps_the_rest(tmp_path):
    from noisytail.dependencies import write_stage_deps

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "step.py").write_text("from noisytail.metrics import shot_group\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  step:\n    cmd: python pipelines/step.py\n    deps:\n"
        "      - data/in.csv  # the input, explained\n      - src/noisytail/gone.py\n"
    )  # fmt: skip
    assert write_stage_deps(tmp_path / "dvc.yaml") == ["step"]
    text = (tmp_path / "dvc.yaml").read_text()
    assert "- data/in.csv  # the input, explained" in text
    assert "src/noisytail/metrics.py" in text and "gone.py" not in text
    assert write_stage_deps(tmp_path / "dvc.yaml") == []  # written once: up to date
