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

Obj = Mapping[str, Any]

GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "pytorch-cuda")
CPU_BACKENDS = ("onnxruntime", "openvino")

#: A resource's name becomes its Service's name (a DNS-1035 label) and a label value.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63


@dataclass(frozen=True)
class Rule:
    """One rule on one object of the schema (the object the CEL ``self`` is)."""

    cel: str
    message: str
    holds: Callable[[Obj], bool]

    def schema(self) -> dict[str, str]:
        return {"rule": self.cel, "message": self.message}


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _zero(value: Any) -> bool:
    return str(value) in ("0", "0%")


#: Rules on ``spec.hardware``.
HARDWARE = [
    Rule(
        cel=f"self.pool == 'gpu' || !(self.backend in {_cel_list(GPU_BACKENDS)})",
        message="tensorrt, onnxruntime-cuda and pytorch-cuda need a GPU: set hardware.pool to gpu",
        holds=lambda hw: hw.get("pool") == "gpu" or hw.get("backend") not in GPU_BACKENDS,
    ),
    Rule(
        cel=f"self.pool == 'xeon' || !(self.backend in {_cel_list(CPU_BACKENDS)})",
        message=(
            "onnxruntime and openvino run on the xeon pool; on gpu use tensorrt, "
            "onnxruntime-cuda or pytorch-cuda"
        ),
        holds=lambda hw: hw.get("pool") == "xeon" or hw.get("backend") not in CPU_BACKENDS,
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
    """The messages of the rules ``obj`` breaks."""
    return [rule.message for rule in rules if not rule.holds(obj)]
