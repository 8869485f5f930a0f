"""Server-side apply and field ownership (``metadata.managedFields``, FieldsV1).

Every write records which manager set which fields, as the real server does: an apply
(``application/apply-patch+yaml``) makes its manager own exactly the fields of its
configuration; any other write (create, update, patch) makes its manager own the fields it
changed and takes them from the others. On apply:

- a field the configuration sets to a new value, owned by another manager, is a 409
  conflict unless ``force`` (which moves the ownership);
- fields the manager applied before and no longer applies are removed, unless another
  manager owns them too;
- a field set to the value it already has is shared, not a conflict. So a GitOps tool and
  the operator applying the same object under different managers do not fight, and a
  re-apply of the same configuration changes nothing (no new resourceVersion).

Simplifications: lists are atomic (owned whole; the real server merges lists by key and
records ``k:{...}`` entries), and one manager entry is kept per (manager, operation,
subresource) regardless of apiVersion.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from polyserve_sandbox.apiserver import errors
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]
Path = tuple[str, ...]

# Metadata the server owns: never tracked, never applied.
_SYSTEM_METADATA = frozenset(
    {
        "name",
        "namespace",
        "generateName",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    }
)


def leaves(obj: Obj, *, status: bool | None) -> dict[Path, Any]:
    """The owned-field view of an object: leaf path -> value. ``status``: None for all
    fields, False for all but ``.status``, True for ``.status`` only."""
    found: dict[Path, Any] = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if status is not None and (key == "status") != status:
            continue
        if key == "metadata" and isinstance(value, dict):
            for meta_key, meta_value in value.items():
                if meta_key not in _SYSTEM_METADATA:
                    _walk(meta_value, ("metadata", meta_key), found)
        else:
            _walk(value, (key,), found)
    return found


def _walk(value: Any, path: Path, found: dict[Path, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _walk(sub, (*path, key), found)
    else:
        found[path] = value


def to_fields_v1(paths: Iterable[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for step in path:
            node = node.setdefault(f"f:{step}", {})
    return tree


def from_fields_v1(tree: Any, prefix: Path = ()) -> set[Path]:
    found: set[Path] = set()
    if not isinstance(tree, dict):
        return found
    children = {k: v for k, v in tree.items() if k.startswith("f:")}
    if not children and prefix:
        found.add(prefix)
    for key, sub in children.items():
        found |= from_fields_v1(sub, (*prefix, key[2:]))
    return found


@dataclass
class Entry:
    manager: str
    operation: str  # "Apply" | "Update"
    api_version: str
    time: str
    subresource: str
    paths: set[Path] = field(default_factory=set)
    changed: bool = False

    def render(self) -> Obj:
        entry: Obj = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.paths),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


def read_entries(obj: Obj) -> list[Entry]:
    entries = []
    for raw in (obj.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(raw, dict):
            continue
        entries.append(
            Entry(
                manager=str(raw.get("manager", "")),
                operation=str(raw.get("operation", "Update")),
                api_version=str(raw.get("apiVersion", "")),
                time=str(raw.get("time", "")),
                subresource=str(raw.get("subresource", "")),
                paths=from_fields_v1(raw.get("fieldsV1")),
            )
        )
    return entries


def write_entries(obj: Obj, entries: list[Entry], now: str) -> None:
    rendered = []
    for entry in entries:
        if not entry.paths:
            continue
        if entry.changed:
            entry.time = now
        rendered.append(entry.render())
    meta = obj.setdefault("metadata", {})
    if rendered:
        meta["managedFields"] = rendered
    else:
        meta.pop("managedFields", None)


def _entry(
    entries: list[Entry], manager: str, operation: str, subresource: str, api_version: str
) -> Entry:
    for entry in entries:
        if (entry.manager, entry.operation, entry.subresource) == (manager, operation, subresource):
            if entry.api_version != api_version:
                entry.api_version = api_version
                entry.changed = True
            return entry
    entry = Entry(manager, operation, api_version, "", subresource, changed=True)
    entries.append(entry)
    return entry


def _touching(paths: Iterable[Path]) -> Callable[[Path], bool]:
    """A test: does a path overlap any of ``paths`` (equal, above or under one)? Linear in
    the path's depth, not in the number of paths."""
    owned = set(paths)
    above = {p[:i] for p in owned for i in range(1, len(p))}

    def touches(path: Path) -> bool:
        return path in owned or path in above or any(path[:i] in owned for i in range(1, len(path)))

    return touches


def _scope(subresource: str | None, has_status: bool) -> bool | None:
    if subresource == "status":
        return True
    return False if has_status else None


def record_update(
    old: Obj | None,
    new: Obj,
    *,
    manager: str,
    api_version: str,
    subresource: str | None,
    has_status: bool,
    now: str,
) -> None:
    """A non-apply write: ``manager`` owns what it changed, others lose it; removed fields
    are owned by no one. The base is ``new``'s own managedFields: the old ones, unless the
    request set them (as kubectl does when it upgrades client-side apply ownership).
    Writes ``new``'s managedFields."""
    status = _scope(subresource, has_status)
    before = leaves(old, status=status) if old else {}
    after = leaves(new, status=status)
    changed = [p for p, v in after.items() if p not in before or before[p] != v]
    removed = [p for p in before if p not in after]
    entries = read_entries(new)
    if not changed and not removed:
        write_entries(new, entries, now)
        return
    sub = subresource or ""
    touched = _touching([*changed, *removed])
    for entry in entries:
        if entry.subresource != sub:
            continue
        kept = {p for p in entry.paths if not touched(p)}
        if kept != entry.paths:
            entry.paths = kept
            entry.changed = True
    if changed:
        mine = _entry(entries, manager, "Update", sub, api_version)
        mine.paths |= set(changed)
        mine.changed = True
    write_entries(new, entries, now)


def apply(
    live: Obj,
    config: Obj,
    *,
    resource: Resource,
    manager: str,
    force: bool,
    subresource: str | None,
    now: str,
) -> Obj:
    """Apply ``config`` onto ``live`` for ``manager``; returns the new object.

    An applied value that the live one already holds (the same, or the same plus fields the
    server or an admission hook defaulted inside it) is no change: it is kept as it is, so
    defaults inside an applied list neither read as a conflict nor flap."""
    status = _scope(subresource, resource.has_status)
    applied = leaves(config, status=status)
    entries = read_entries(live)
    sub = subresource or ""
    mine = _entry(entries, manager, "Apply", sub, resource.api_version)
    others = [e for e in entries if e is not mine]

    changes = [p for p, value in applied.items() if not _contains(_get(live, p), value)]
    conflicts: list[tuple[Entry, Path]] = []
    owners = [(other, _touching(other.paths)) for other in others]
    for path in changes:
        conflicts.extend((other, path) for other, owns in owners if owns(path))
    if conflicts and not force:
        name = (live.get("metadata") or {}).get("name", "")
        raise errors.apply_conflicts(
            resource.plural,
            resource.group,
            name,
            [(e.manager, e.api_version, "." + ".".join(p)) for e, p in conflicts],
        )
    for other, path in conflicts:
        taken = _touching([path])
        other.paths = {p for p in other.paths if not taken(p)}
        other.changed = True

    merged: Obj = copy.deepcopy(live)
    for path in changes:
        _set(merged, path, applied[path])
    # Remove what this manager applied before and no longer applies, unless shared.
    shared = _touching(p for e in others for p in e.paths)
    for path in mine.paths - set(applied):
        if not shared(path):
            _delete(merged, path)
    if mine.paths != set(applied):
        mine.paths = set(applied)
        mine.changed = True
    write_entries(merged, entries, now)
    return merged


def _contains(live: Any, config: Any) -> bool:
    """Whether the live value holds the configured one (maps: every configured key)."""
    if isinstance(config, dict):
        return isinstance(live, dict) and all(
            k in live and _contains(live[k], v) for k, v in config.items()
        )
    if isinstance(config, list):
        return (
            isinstance(live, list)
            and len(live) == len(config)
            and all(_contains(a, b) for a, b in zip(live, config, strict=True))
        )
    if isinstance(config, bool) or isinstance(live, bool):
        return live is config
    return bool(live == config)


_MISSING = object()


def _get(obj: Obj, path: Path) -> Any:
    node: Any = obj
    for step in path:
        if not isinstance(node, dict) or step not in node:
            return _MISSING
        node = node[step]
    return node


def _set(obj: Obj, path: Path, value: Any) -> None:
    node = obj
    for step in path[:-1]:
        child = node.get(step)
        if not isinstance(child, dict):
            child = node[step] = {}
        node = child
    node[path[-1]] = copy.deepcopy(value)


def _delete(obj: Obj, path: Path) -> None:
    trail: list[tuple[Obj, str]] = []
    node: Any = obj
    for step in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(step), dict):
            return
        trail.append((node, step))
        node = node[step]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    # Drop maps the removal left empty (no one owns an empty map under a removed field).
    for parent, step in reversed(trail):
        if parent[step] == {} and step != "metadata":
            del parent[step]
        else:
            break
