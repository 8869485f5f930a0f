"""CustomResourceDefinitions generated from ``api``: ``make crds`` writes ``crds/*.yaml``.

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined,
``Optional`` unwrapped, ``const`` turned into ``enum``, numeric exclusive bounds into the
OpenAPI v3.0 form, free-form maps marked ``x-kubernetes-preserve-unknown-fields``. CEL rules
carry the cross-field checks the API server can make on its own; the validating webhook
makes the ones that need other objects. Pure: no I/O beyond ``main`` writing files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from polyserve_operator import api, rules

_DROP = {"title", "examples", "propertyNames", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            return _structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue  # forbidden in structural schemas; the API server prunes unknown fields
        if key == "description":
            out[key] = " ".join(str(value).split())
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "anyOf" and node.get("x-kubernetes-int-or-string"):
            out[key] = value
        else:
            out[key] = _structural(value, defs)
    if out.get("type") == "object" and "properties" not in out:
        extra = out.get("additionalProperties")
        if extra in (None, True, {}):
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, by alias (camelCase)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(raw, defs)
    return result


def _with_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """The CEL rules of ``rules`` on the objects they constrain."""
    spec["properties"]["hardware"]["x-kubernetes-validations"] = [
        r.schema() for r in rules.HARDWARE
    ]
    if "tiers" in spec["properties"]:
        spec["x-kubernetes-validations"] = [r.schema() for r in rules.MODEL_SPEC]
    if "scaling" in spec["properties"]:
        spec["properties"]["scaling"]["x-kubernetes-validations"] = [
            r.schema() for r in rules.SCALING
        ]
    if "modelFormat" in spec["properties"]:
        # The format must load on the backend: a rule on the spec, as it reads both fields.
        spec.setdefault("x-kubernetes-validations", []).extend(
            r.schema() for r in rules.MODEL_FORMAT
        )
    if "rollout" in spec["properties"]:
        rollout = spec["properties"]["rollout"]
        rollout["x-kubernetes-validations"] = [r.schema() for r in rules.ROLLOUT]
        canary = rollout["properties"]["canary"]
        canary["x-kubernetes-validations"] = [r.schema() for r in rules.CANARY]
        canary["properties"]["steps"]["items"]["x-kubernetes-validations"] = [
            r.schema() for r in rules.CANARY_STEP
        ]
        metric = canary["properties"]["analysis"]["properties"]["metrics"]["items"]
        metric["x-kubernetes-validations"] = [r.schema() for r in rules.METRIC]
    return spec


def _condition_column(kind: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": f"Whether every replica of the {kind} serves.",
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "description": "Why it is (not) ready.",
        },
    ]


def _columns(kind: str) -> list[dict[str, Any]]:
    tier = {
        "name": "Tier",
        "type": "string",
        "jsonPath": ".status.tier.current",
        "description": "The query tier a tiered model runs on.",
    }
    return [
        *_condition_column(kind),
        {
            "name": "Backend",
            "type": "string",
            "jsonPath": ".status.backend",
            "description": "The backend that serves (what auto picked).",
        },
        {
            "name": "Pool",
            "type": "string",
            "jsonPath": ".status.pool",
            "description": "The node pool its pods are placed on.",
        },
        {
            "name": "Replicas",
            "type": "integer",
            "jsonPath": ".status.replicas",
            "description": "Pods that run (an autoscaler's or a tier's count included).",
        },
        {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
        *([tier] if kind == "InferenceModel" else []),
        {
            "name": "Rollout",
            "type": "string",
            "jsonPath": ".status.rollout.phase",
            "description": "A canary rollout's phase (strategy Canary).",
        },
        {
            "name": "Weight",
            "type": "integer",
            "jsonPath": ".status.rollout.weight",
            "description": "Percent of the traffic the canary gets.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def _crd(
    kind: str, plural: str, short: str, spec_model: type[BaseModel], description: str
) -> dict[str, Any]:
    spec = _with_rules(schema_of(spec_model))
    status = schema_of(api.WorkloadStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["polyserve", "all"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(kind),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "x-kubernetes-validations": [r.schema() for r in rules.RESOURCE],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def definitions() -> dict[str, dict[str, Any]]:
    """File name -> CRD document, for every custom resource."""
    return {
        "inferencemodels.yaml": _crd(
            "InferenceModel",
            "inferencemodels",
            "im",
            api.InferenceModelSpec,
            "A model served by polyserve-worker pods on a GPU or Xeon node pool.",
        ),
        "inferenceensembles.yaml": _crd(
            "InferenceEnsemble",
            "inferenceensembles",
            "ie",
            api.InferenceEnsembleSpec,
            "A pipeline of InferenceModels served in-process by one worker Deployment.",
        ),
    }


def dump(document: dict[str, Any]) -> str:
    """YAML text with a header that says where it comes from."""
    header = "# Generated by `make crds` from operator/polyserve_operator/api.py. Do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """Write every CRD into the folder given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m polyserve_operator.crds OUTPUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, document in definitions().items():
        (out / name).write_text(dump(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
