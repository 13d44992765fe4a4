"""The registered model's environment: every distribution the served code needs, pinned.

A model loaded next year beside another timm (or another huggingface_hub under it) may silently
predict differently, so the model names exact versions of the whole closure. Which
distributions: what the entry module and the package files it imports import
(``dependencies.third_party_modules``, read from the source), mapped from module to distribution
by the installed metadata, then everything those require in this environment (their
``Requires-Dist``, markers evaluated, extras not asked for left out). Which versions: the
installed ones, which must be the lock's (``requirements.lock``): a model logged from a drifted
environment is refused instead of recording the drift. A distribution required only on some
platforms (torch's CUDA wheels and triton: ``platform_system == "Linux"``) keeps that marker in
its pin, so the model still installs on a machine without them.
"""

from __future__ import annotations

import graphlib
from collections import deque
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
    markers = closure(names)
    pins = {metadata.metadata(n)["Name"]: metadata.version(n) for n in markers}
    if lock is not None:
        locked = dict(_lock_lines(Path(lock)))
        drift = [f"{n}=={v} (lock: {locked.get(_key(n), 'absent')})" for n, v in pins.items()
                 if locked.get(_key(n)) != v]  # fmt: skip
        if drift:
            raise RuntimeError(f"the environment differs from {lock}: {', '.join(sorted(drift))}"
                               f"; run `make setup` before registering")  # fmt: skip
    return sorted(_pin(n, v, markers[_key(n)]) for n, v in pins.items())


# What every virtual environment brings, and `pip freeze` (the lock) leaves out.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def closure(names: set[str]) -> dict[str, set[str | None]]:
    """``names`` and every distribution they require, transitively, as installed here; each with
    the environment markers under which it is required (``{None}``: always)."""
    roots = {_key(n) for n in names}
    extras: dict[str, set[str]] = {k: {""} for k in roots}
    required_by: dict[str, set[tuple[str, str | None]]] = {}  # child -> (parent, marker)
    todo = sorted(roots)
    while todo:  # which distributions, and the extras asked of each (a new extra: read again)
        name = todo.pop()
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": e}) for e in extras[name]):
                continue  # another platform's or an extra's not asked for
            child = _key(requirement.name)
            if child in BOOTSTRAP:
                continue
            try:
                metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                raise RuntimeError(f"{name} requires {requirement.name}, which is not "
                                   f"installed; run `make setup`") from None  # fmt: skip
            # an extra's requirement holds wherever its parent does; a platform marker narrows it
            edge = str(marker) if marker and "extra" not in str(marker) else None
            required_by.setdefault(child, set()).add((name, edge))
            if child not in extras or not requirement.extras <= extras[child]:
                extras[child] = extras.get(child, {""}) | set(requirement.extras)
                todo.append(child)
    return propagate_markers(roots, required_by)


def propagate_markers(
    roots: set[str], required_by: dict[str, set[tuple[str, str | None]]]
) -> dict[str, set[str | None]]:
    """Each distribution's markers: the union, over its requirers, of the requirer's markers
    and the requirement's own (``{None}``, always, absorbs the rest).

    Requirers first where there is such an order (one pass, each node from its requirers' final
    markers). Distributions that require each other (a cycle) have none: there the markers are
    grown to a fixed point, never dropping a term, so the cycle gets the markers that enter it
    from outside. That ends: a node's set only grows, and its terms are conjunctions of distinct
    requirement markers (``_both`` adds none twice), of which there are finitely many."""
    requirers_of = {child: {(p, e) for p, e in edges if p != child}
                    for child, edges in required_by.items()}  # fmt: skip
    required: dict[str, set[str]] = {}
    for child, edges in requirers_of.items():
        for parent, _ in edges:
            required.setdefault(parent, set()).add(child)
    graph = {child: {p for p, _ in edges} for child, edges in requirers_of.items()}
    try:
        order = [n for n in graphlib.TopologicalSorter(graph).static_order() if n in graph]
    except graphlib.CycleError:
        order = sorted(graph)
    markers: dict[str, set[str | None]] = {k: {None} for k in roots}
    todo = deque(n for n in order if n not in roots)
    queued = set(todo)
    while todo:
        node = todo.popleft()
        queued.discard(node)
        reached = markers.get(node, set()) | {_both(m, edge) for parent, edge in requirers_of[node]
                                              for m in markers.get(parent, ())}  # fmt: skip
        reached = {None} if None in reached else reached
        if reached != markers.get(node):
            markers[node] = reached
            for child in sorted(required.get(node, set()) - roots - queued):
                todo.append(child)
                queued.add(child)
    return markers


def _both(parent: str | None, edge: str | None) -> str | None:
    if parent is None or edge is None or edge in parent:
        return edge if parent is None else parent
    return f"({parent}) and ({edge})"


def _pin(name: str, version: str, markers: set[str | None]) -> str:
    """``name==version``, with its markers (normalised as MLflow writes them) where it has any."""
    if None in markers:
        return f"{name}=={version}"
    ordered = sorted(markers)
    either = ordered[0] if len(ordered) == 1 else " or ".join(f"({m})" for m in ordered)
    return str(Requirement(f"{name}=={version}; {either}"))


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _lock_lines(lock: Path):
    for line in lock.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            yield _key(name), version.strip()
