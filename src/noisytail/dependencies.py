"""Which library files a script or module imports, read from the source (nothing is executed).

Two things rest on it: a training run's fingerprint hashes the files the training code imports
(``training.checkpoints.code_digest``), and each DVC stage's deps name the library files its
script imports (``stage_deps``; ``python -m noisytail.dependencies`` writes them into dvc.yaml,
and a test fails when they drift). Imports under ``if TYPE_CHECKING:`` are not followed: they
are there for type hints only.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NAME = PACKAGE.name
# A stage that imports one of these ships the whole package (MLflow's code_paths): it depends
# on every file of it.
SHIPS_PACKAGE = ("serving/model.py",)


def trivial(file: Path) -> bool:
    """A package ``__init__`` that only documents (a docstring, constants such as the version):
    left out of deps and fingerprints, so that a version bump re-runs nothing."""
    if file.name != "__init__.py":
        return False
    body = ast.parse(file.read_text()).body
    return all(isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant)
               for node in body)  # fmt: skip


def module_file(module: str) -> Path | None:
    """``noisytail.a.b`` -> the file that defines it, or None (not ours, or no such file)."""
    parts = module.split(".")
    if parts[0] != NAME:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_files(path: Path) -> set[Path]:
    """The package's files that ``path`` imports directly (a package's ``__init__`` included)."""
    found: set[Path] = set()

    def add(module: str) -> None:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            file = module_file(".".join(parts[:depth]))
            if file is not None and not trivial(file):
                found.add(file)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                add(child.module)
                for alias in child.names:  # `from noisytail.x import module`
                    if module_file(f"{child.module}.{alias.name}") is not None:
                        add(f"{child.module}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def import_closure(paths: Iterable[Path]) -> list[Path]:
    """Every package file that ``paths`` import, directly or not, sorted."""
    seen: set[Path] = set()
    todo = [Path(p).resolve() for p in paths]
    while todo:
        for file in imported_files(todo.pop()):
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return sorted(seen)


def third_party_modules(paths: Iterable[Path]) -> set[str]:
    """Top-level names of the modules outside the package and the standard library that
    ``paths`` and the package files they import import (inside functions too: they may run)."""
    paths = [Path(p).resolve() for p in paths]
    names: set[str] = set()
    for file in {*paths, *import_closure(paths)}:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != NAME and n not in sys.stdlib_module_names
            and n != "__future__"}  # fmt: skip


def compressed(files: Iterable[Path]) -> list[str]:
    """Package-relative paths, a folder named once (its highest whole one) when every ``.py``
    file below it is listed."""
    files = set(files)

    def whole(folder: Path) -> bool:
        return all(f in files or trivial(f) for f in folder.rglob("*.py"))

    names = set()
    for file in files:
        chosen, folder = file, file.parent
        while folder != PACKAGE:
            if whole(folder):
                chosen = folder
            folder = folder.parent
        names.add(chosen.relative_to(PACKAGE).as_posix())
    return sorted(names)


def library_deps(script: Path, source_root: str = "src") -> list[str]:
    """The library paths (as dvc.yaml names them) that ``script`` imports."""
    closure = import_closure([script])
    prefix = f"{source_root}/{NAME}"
    if any(PACKAGE / name in closure for name in SHIPS_PACKAGE):
        return [prefix]
    return [f"{prefix}/{name}" for name in compressed(closure)]


STAGE_SCRIPT = re.compile(r"pipelines/(\w+)\.py")


def stage_deps(dvc_yaml: Path) -> dict[str, list[str]]:
    """Per stage of ``dvc_yaml``: the library deps its script's imports call for."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        match = STAGE_SCRIPT.search(body["cmd"])
        if match:
            script = dvc_yaml.parent / "pipelines" / f"{match.group(1)}.py"
            out[name] = library_deps(script)
    return out


def write_stage_deps(dvc_yaml: Path) -> list[str]:
    """Rewrite each stage's library deps in ``dvc_yaml`` (comments and order kept); returns the
    stages that changed."""
    from ruamel.yaml import YAML

    parser = YAML()
    parser.preserve_quotes = True
    parser.width = 4096
    parser.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own style
    document = parser.load(dvc_yaml.read_text())
    changed = []
    for name, wanted in stage_deps(dvc_yaml).items():
        body = document["stages"][name]
        body = body.get("do", body)
        deps = body["deps"]
        current = [d for d in deps if str(d).startswith(f"src/{NAME}")]
        if current == wanted:
            continue
        changed.append(name)
        for index in reversed(range(len(deps))):  # the other deps stay, comments and all
            if str(deps[index]).startswith(f"src/{NAME}"):
                del deps[index]
        deps.extend(wanted)
    if changed:
        with dvc_yaml.open("w") as out:
            parser.dump(document, out)
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m noisytail.dependencies [dvc.yaml]``: write the stages' library deps."""
    target = Path((argv or sys.argv[1:] or ["dvc.yaml"])[0])
    changed = write_stage_deps(target)
    print(f"{target}: library deps rewritten for {', '.join(changed)}" if changed
          else f"{target}: library deps up to date")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
