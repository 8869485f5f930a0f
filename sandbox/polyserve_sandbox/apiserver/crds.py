"""CustomResourceDefinitions: what a CRD object makes the server serve.

Creating an ``apiextensions.k8s.io/v1`` CRD registers one resource per served version
(scope, names, short names, categories, the ``status`` subresource, printer columns, the
schema and its CEL rules, compiled once; a rule that does not compile refuses the CRD, as
the real server does) and sets ``status.conditions`` NamesAccepted and Established to True
at once (a real server takes a moment; ``kubectl wait --for=condition=Established`` works
either way).
Deleting a CRD deletes its objects (their finalizers are honoured) and then the CRD.

Not emulated: conversion webhooks and conversion between versions (every version shares
one storage, as ``strategy: None``), the ``scale`` subresource of custom resources, and
names conflicts between CRDs (NamesAccepted is always True).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polyserve_sandbox.apiserver import errors, validations
from polyserve_sandbox.apiserver.resources import Resource

if TYPE_CHECKING:
    from polyserve_sandbox.apiserver.store import Store

Obj = dict[str, Any]

GROUP = "apiextensions.k8s.io"
KIND = "CustomResourceDefinition"
# The finalizer a real server puts on every CRD until its objects are gone.
CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


def validate(crd: Obj) -> None:
    """The checks a real server makes that a wrong CRD would trip first."""
    meta = crd.get("metadata") or {}
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    name = meta.get("name", "")
    causes: list[errors.Cause] = []
    group, plural = spec.get("group"), names.get("plural")
    if not group:
        causes.append(errors.Cause("spec.group", "Required value", "FieldValueRequired"))
    if not plural:
        causes.append(errors.Cause("spec.names.plural", "Required value", "FieldValueRequired"))
    if not names.get("kind"):
        causes.append(errors.Cause("spec.names.kind", "Required value", "FieldValueRequired"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(
            errors.Cause(
                "spec.scope",
                f'Unsupported value: "{spec.get("scope", "")}": supported values: "Cluster", '
                '"Namespaced"',
                "FieldValueNotSupported",
            )
        )
    if group and plural and name != f"{plural}.{group}":
        causes.append(
            errors.Cause(
                "metadata.name",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
            )
        )
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            errors.Cause(
                "spec.versions",
                "Invalid value: null: must have exactly one version marked as storage version",
            )
        )
    elif sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            errors.Cause(
                "spec.versions",
                "Invalid value: []apiextensions.CustomResourceDefinitionVersion: must have "
                "exactly one version marked as storage version",
            )
        )
    causes.extend(_rule_problems(versions))
    if causes:
        raise errors.invalid(KIND, GROUP, name, causes)


def _schema_paths(versions: list[Obj]) -> list[tuple[str, Obj]]:
    """Each distinct schema and its field path as the server names it: versions that share
    one schema are validated once, as ``spec.validation`` (the server's internal form)."""
    schemas = [(v.get("schema") or {}).get("openAPIV3Schema") for v in versions]
    found = [s for s in schemas if isinstance(s, dict)]
    if found and len(found) == len(versions) and all(s == found[0] for s in found):
        return [("spec.validation.openAPIV3Schema", found[0])]
    return [
        (f"spec.versions[{i}].schema.openAPIV3Schema", s)
        for i, s in enumerate(schemas)
        if isinstance(s, dict)
    ]


def _rule_problems(versions: list[Obj]) -> list[errors.Cause]:
    """CEL rules the server refuses when the CRD is written (they do not compile...)."""
    problems: list[errors.Cause] = []
    for where, schema in _schema_paths(versions):
        problems += validations.build(schema, where)[1]
    return problems


def resources_of(crd: Obj) -> list[Resource]:
    """The resources a CRD serves: one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    found = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        found.append(
            Resource(
                group=spec["group"],
                version=version["name"],
                kind=names["kind"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset({"status"}) if "status" in subresources else frozenset(),
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                validations=validations.build(
                    (version.get("schema") or {}).get("openAPIV3Schema"), "openAPIV3Schema"
                )[0],
                crd=(crd.get("metadata") or {}).get("name"),
            )
        )
    return found


def status(crd: Obj, previous: Obj | None, now: str) -> Obj:
    """Established and NamesAccepted True; transition times kept from ``previous``."""
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or []}

    def since(kind: str) -> str:
        return str(before.get(kind, {}).get("lastTransitionTime") or now)

    stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    old_stored = (previous or {}).get("storedVersions") or []
    return {
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": since("NamesAccepted"),
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": since("Established"),
            },
        ],
        "acceptedNames": names,
        "storedVersions": list(dict.fromkeys([*old_stored, *stored])),
    }


def register_project_crds(store: Store) -> None:
    """Serve polyserve's own CRDs (InferenceModel, InferenceEnsemble), as ``crds/`` has them."""
    from polyserve_operator import crds as project_crds  # the generator, pure: no kopf, no I/O

    for document in project_crds.definitions().values():
        current = store.try_get(f"{GROUP}/v1", KIND, None, document["metadata"]["name"])
        if current is None:
            store.create(document, field_manager="polyserve-sandbox")
        else:
            body = {
                **document,
                "metadata": {
                    **document["metadata"],
                    "resourceVersion": current["metadata"]["resourceVersion"],
                },
            }
            store.replace(body)
