"""The registered model's environment: every distribution the served code needs, pinned.

A model loaded next year beside another timm (or another huggingface_hub under it) may silently
predict differently, so the model names exact versions of the whole closure. Which
distributions: what the entry module and the package files it imports import
(``dependencies.third_party_modules``, read from the source), mapped from module to distribution
by the installed metadata, then everything those require in this environment (their
``Requires-Dist``, markers evaluated, extras not asked for left out). Which versions: the
installed ones, which must be the lock's (``requirements.lock``): a model logged from a drifted
environment is refused instead of recording the drift.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from noisytail.dependencies import module_file, third_party_modules


def pinned_requirements(entry: str, lock: str | Path | None = None) -> list[str]:
    """``name==version`` for each distribution the code of module ``entry`` imports; checked
    against ``lock`` (``pip freeze`` lines) when given."""
    owners = metadata.packages_distributions()
    names = set()
    for module in third_party_modules([module_file(entry)]):
        if module not in owners:
            raise RuntimeError(f"the served code imports {module}, which no installed "
                               f"distribution provides")  # fmt: skip
        names.update(owners[module])
    pins = {metadata.metadata(n)["Name"]: metadata.version(n) for n in closure(names)}
    if lock is not None:
        locked = dict(_lock_lines(Path(lock)))
        drift = [f"{n}=={v} (lock: {locked.get(_key(n), 'absent')})" for n, v in pins.items()
                 if locked.get(_key(n)) != v]  # fmt: skip
        if drift:
            raise RuntimeError(f"the environment differs from {lock}: {', '.join(sorted(drift))}"
                               f"; run `make setup` before registering")  # fmt: skip
    return sorted(f"{n}=={v}" for n, v in pins.items())


# What every virtual environment brings, and `pip freeze` (the lock) leaves out.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, transitively, as installed here."""
    seen, todo = set(), [_key(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue  # another platform's or an extra's
            if _key(requirement.name) in BOOTSTRAP:
                continue
            try:
                metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                raise RuntimeError(f"{name} requires {requirement.name}, which is not "
                                   f"installed; run `make setup`") from None  # fmt: skip
            todo.append(_key(requirement.name))
    return seen


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _lock_lines(lock: Path):
    for line in lock.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            yield _key(name), version.strip()
