"""The registered model's environment: every distribution the served code imports, pinned.

A model loaded next year beside another timm may silently predict differently, so the model
names exact versions. Which distributions: what the entry module and the package files it
imports import (``dependencies.third_party_modules``, read from the source), mapped from module
to distribution by the installed metadata. Which versions: the installed ones, which must be the
lock's (``requirements.lock``): a model logged from a drifted environment is refused instead of
recording the drift.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

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
    pins = {metadata.metadata(n)["Name"]: metadata.version(n) for n in names}
    if lock is not None:
        locked = dict(_lock_lines(Path(lock)))
        drift = [f"{n}=={v} (lock: {locked.get(_key(n), 'absent')})" for n, v in pins.items()
                 if locked.get(_key(n)) != v]  # fmt: skip
        if drift:
            raise RuntimeError(f"the environment differs from {lock}: {', '.join(sorted(drift))}"
                               f"; run `make setup` before registering")  # fmt: skip
    return sorted(f"{n}=={v}" for n, v in pins.items())


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _lock_lines(lock: Path):
    for line in lock.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            yield _key(name), version.strip()
