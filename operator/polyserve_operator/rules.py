"""Cross-field rules, each stated once and enforced twice: by the API server as a CRD CEL rule
(``x-kubernetes-validations``) and by the operator in Python (the webhook and the
reconcilers, for clusters or API servers that evaluate no CEL). A test evaluates every CEL
expression with a CEL interpreter against the Python check on the same inputs, so the two
cannot drift. Pure data and functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from polyserve_operator.render import engines

Obj = Mapping[str, Any]

#: A resource's name becomes its Service's name (a DNS-1035 label) and a label value.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63


@dataclass(frozen=True)
class Rule:
    """One rule on one object of the schema (the object the CEL ``self`` is)."""

    cel: str
    message: str
    holds: Callable[[Obj], bool]
    #: The message for one object, where more can be said than the CEL rule's fixed one.
    explain: Callable[[Obj], str] | None = None

    def schema(self) -> dict[str, str]:
        return {"rule": self.cel, "message": self.message}

    def describe(self, obj: Obj) -> str:
        return self.explain(obj) if self.explain is not None else self.message


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _cel_map(entries: Mapping[str, tuple[str, ...]]) -> str:
    return "{" + ", ".join(f"'{k}': {_cel_list(v)}" for k, v in entries.items()) + "}"


def _words(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def _listed(values: tuple[str, ...], last: str = "and") -> str:
    """``a, b and c``."""
    return f" {last} ".join([", ".join(values[:-1]), values[-1]]) if len(values) > 1 else values[0]


# What fits where, from the worker's backend registry (through ``render.engines``): the CEL
# rules below carry these lists as literals, generated, never typed out.
_ON_POOL = {pool: engines.values_on(pool) for pool in engines.POOLS}
_ONLY_GPU = tuple(v for v in _ON_POOL["gpu"] if v not in _ON_POOL["xeon"])
_ONLY_XEON = tuple(v for v in _ON_POOL["xeon"] if v not in _ON_POOL["gpu"])
_LOADING = {f: engines.values_loading(f) for f in engines.FORMATS}
_FORMATS_ON = {pool: engines.formats_on(pool) for pool in engines.POOLS}
_ANYWHERE = tuple(f for f in engines.FORMATS if all(f in v for v in _FORMATS_ON.values()))


def _backend(hw: Obj) -> str:
    return str(hw.get("backend", engines.AUTO))


def _format_fits(spec: Obj) -> bool:
    if "hardware" not in spec:
        return True
    backend = _backend(spec["hardware"])
    fmt = spec.get("modelFormat", {}).get("name")
    return backend == engines.AUTO or backend in _LOADING.get(str(fmt), ())


def _explain_format(spec: Obj) -> str:
    hw = spec.get("hardware", {})
    fmt = str(spec.get("modelFormat", {}).get("name"))
    pool = str(hw.get("pool"))
    here = tuple(v for v in _LOADING.get(fmt, ()) if v in _ON_POOL.get(pool, ()))
    picked = engines.fastest(fmt, pool) if here else None
    fix = f"; set hardware.backend to {' or '.join((*here, 'auto'))}" if here else ""
    auto = f" (auto picks {picked} on pool {pool})" if picked else ""
    return (
        f"{'an' if fmt[:1] in 'aeiou' else 'a'} {fmt} model cannot load on backend "
        f"{_backend(hw)}: {fmt} files load on "
        f"{_words(_LOADING.get(fmt, ()))}{fix}{auto}"
    )


def _auto_fits(spec: Obj) -> bool:
    if "hardware" not in spec:
        return True
    hw = spec["hardware"]
    fmt = spec.get("modelFormat", {}).get("name")
    return _backend(hw) != engines.AUTO or fmt in _FORMATS_ON.get(str(hw.get("pool")), ())


def _explain_auto(spec: Obj) -> str:
    fmt = str(spec.get("modelFormat", {}).get("name"))
    pool = str(spec.get("hardware", {}).get("pool"))
    where = [p for p in engines.POOLS if fmt in _FORMATS_ON[p]]
    return (
        f"no backend loads {fmt} files on pool {pool}: they run on pool "
        f"{' or '.join(where) or 'none'}; set hardware.pool to {where[0] if where else '?'}, "
        f"or give a format every pool runs ({_words(_ANYWHERE)})"
    )


def _zero(value: Any) -> bool:
    return str(value) in ("0", "0%")


#: Rules on ``spec.hardware``.
HARDWARE = [
    Rule(
        cel=f"self.pool != 'xeon' || self.backend in {_cel_list(_ON_POOL['xeon'])}",
        message=f"{_listed(_ONLY_GPU)} need a GPU: set hardware.pool to gpu",
        holds=lambda hw: hw.get("pool") != "xeon" or _backend(hw) in _ON_POOL["xeon"],
    ),
    Rule(
        cel=f"self.pool != 'gpu' || self.backend in {_cel_list(_ON_POOL['gpu'])}",
        message=(
            f"{_listed(_ONLY_XEON)} {'runs' if len(_ONLY_XEON) == 1 else 'run'} on the xeon "
            f"pool; on gpu (NVIDIA) use {_listed(_ON_POOL['gpu'], 'or')}"
        ),
        holds=lambda hw: hw.get("pool") != "gpu" or _backend(hw) in _ON_POOL["gpu"],
    ),
    Rule(
        cel="self.pool == 'gpu' || !has(self.gpu)",
        message="hardware.gpu is only for pool gpu: remove it or set pool to gpu",
        holds=lambda hw: hw.get("pool") == "gpu" or hw.get("gpu") is None,
    ),
    Rule(
        cel="self.pool == 'xeon' || !has(self.precision) || self.precision != 'bf16'",
        message="precision bf16 is for the xeon pool (AMX); use fp16 on GPUs",
        holds=lambda hw: hw.get("pool") == "xeon" or hw.get("precision", "fp32") != "bf16",
    ),
]

#: Rules on an InferenceModel's ``spec``: its model format and its backend must fit (where
#: the spec gives its hardware).
MODEL_FORMAT = [
    Rule(
        cel=(
            "!has(self.hardware) || self.hardware.backend == 'auto' || self.hardware.backend in "
            f"{_cel_map(_LOADING)}[self.modelFormat.name]"
        ),
        message=(
            "hardware.backend cannot load this modelFormat: "
            + "; ".join(f"{f} loads on {_words(v)}" for f, v in _LOADING.items())
            + " (backend auto picks one)"
        ),
        holds=_format_fits,
        explain=_explain_format,
    ),
    Rule(
        cel=(
            "!has(self.hardware) || self.hardware.backend != 'auto' || self.modelFormat.name in "
            f"{_cel_map(_FORMATS_ON)}[self.hardware.pool]"
        ),
        message=(
            "no backend on this pool loads this modelFormat: "
            + "; ".join(f"pool {p} loads {_words(v)}" for p, v in _FORMATS_ON.items())
        ),
        holds=_auto_fits,
        explain=_explain_auto,
    ),
]

#: Rules on ``spec.rollout``.
ROLLOUT = [
    Rule(
        cel="has(self.canary) == (has(self.strategy) && self.strategy == 'Canary')",
        message="rollout.canary goes with strategy Canary (and strategy Canary needs it)",
        holds=lambda r: ("canary" in r) == (r.get("strategy") == "Canary"),
    ),
    Rule(
        cel=(
            "!(has(self.maxSurge) && has(self.maxUnavailable) && "
            "string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])"
        ),
        message=(
            "rollout.maxSurge and rollout.maxUnavailable are both 0, so no pod could ever be "
            "replaced: set maxSurge to 1 (a spare pod while rolling) or maxUnavailable to 1"
        ),
        holds=lambda r: (
            not (
                "maxSurge" in r
                and "maxUnavailable" in r
                and _zero(r["maxSurge"])
                and _zero(r["maxUnavailable"])
            )
        ),
    ),
]

#: Rules on each of ``spec.rollout.canary.steps``.
CANARY_STEP = [
    Rule(
        cel=(
            "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0)"
            " + (has(self.analysis) ? 1 : 0) == 1"
        ),
        message="each canary step is exactly one of setWeight, pause and analysis",
        holds=lambda step: sum(k in step for k in ("setWeight", "pause", "analysis")) == 1,
    ),
]

#: Rules on each metric of an analysis.
METRIC = [
    Rule(
        cel="has(self.min) || has(self.max) || has(self.relativeToStable)",
        message="a metric needs a bound: min, max or relativeToStable",
        holds=lambda m: any(k in m for k in ("min", "max", "relativeToStable")),
    ),
]

#: Rules on ``spec.rollout.canary``.
CANARY = [
    Rule(
        cel=(
            "!has(self.analysis) || !has(self.analysis.metrics) || has(self.mirror) || "
            "!self.analysis.metrics.exists(m, m.name == 'mirrorAgreement')"
        ),
        message="the mirrorAgreement metric needs canary.mirror",
        holds=lambda c: (
            "mirror" in c
            or not any(
                m.get("name") == "mirrorAgreement"
                for m in (c.get("analysis") or {}).get("metrics") or []
            )
        ),
    ),
]

#: Rules on an InferenceModel's ``spec``.
MODEL_SPEC = [
    Rule(
        cel="has(self.hardware) || has(self.tiers)",
        message="give hardware (or tiers, for a model that moves between them)",
        holds=lambda spec: "hardware" in spec or "tiers" in spec,
    ),
]

#: Rules on ``spec.scaling``.
SCALING = [
    Rule(
        cel="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
        message="scaling.minReplicas must not exceed scaling.maxReplicas",
        holds=lambda s: s.get("minReplicas", 1) <= s.get("maxReplicas", 1),
    ),
    Rule(
        cel=(
            "!has(self.minReplicas) || self.minReplicas > 0"
            " || (has(self.engine) && self.engine == 'KEDA')"
        ),
        message="scaling to zero (minReplicas 0) needs engine KEDA: an HPA keeps at least one",
        holds=lambda s: s.get("minReplicas", 1) > 0 or s.get("engine") == "KEDA",
    ),
]

#: Rules on the whole resource (CEL may read ``self.metadata.name`` there).
RESOURCE = [
    Rule(
        cel=f"self.metadata.name.size() <= {NAME_MAX}",
        message=(
            f"metadata.name is longer than {NAME_MAX} characters: it becomes the Service's "
            "name and a label value; choose a shorter name"
        ),
        holds=lambda obj: len(str(obj.get("metadata", {}).get("name", ""))) <= NAME_MAX,
    ),
    Rule(
        cel=f"self.metadata.name.matches('{NAME_PATTERN}')",
        message=(
            "metadata.name must be lowercase letters, digits and '-', start with a letter and "
            "end with a letter or digit: it names a Service"
        ),
        holds=lambda obj: bool(
            re.match(NAME_PATTERN, str(obj.get("metadata", {}).get("name", "")))
        ),
    ),
]


def broken(rules: list[Rule], obj: Obj) -> list[str]:
    """The messages of the rules ``obj`` breaks (each as specific as the rule can say)."""
    return [rule.describe(obj) for rule in rules if not rule.holds(obj)]
