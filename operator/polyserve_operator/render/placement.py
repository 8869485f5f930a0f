"""Placement: a hardware profile -> node selector, affinity, tolerations and GPU limits.

Which labels and taints mark a pool is operator settings, not code. Pure functions.
"""

from __future__ import annotations

from typing import Any

from polyserve_operator import api, settings

Obj = dict[str, Any]


def node_selector(hw: api.Hardware, cfg: settings.Settings) -> dict[str, str]:
    """Labels every node must carry."""
    if hw.pool == "gpu":
        selector = dict(cfg.gpu.node_selector)
        if hw.gpu is not None and hw.gpu.product:
            selector[cfg.gpu.product_label] = hw.gpu.product
        return selector
    return dict(cfg.xeon.node_selector)


def affinity(hw: api.Hardware, cfg: settings.Settings) -> Obj | None:
    """bf16 on Xeon needs any one of the BF16 CPU features: OR-ed node selector terms."""
    if hw.pool != "xeon" or hw.precision != "bf16" or not cfg.xeon.bf16_labels:
        return None
    terms = [
        {"matchExpressions": [{"key": label, "operator": "In", "values": ["true"]}]}
        for label in cfg.xeon.bf16_labels
    ]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }


def tolerations(hw: api.Hardware, cfg: settings.Settings) -> list[Obj]:
    """Tolerations for the pool's taints."""
    pool = cfg.gpu.tolerations if hw.pool == "gpu" else cfg.xeon.tolerations
    return [t.model_dump(exclude_none=True) for t in pool]


def resources(hw: api.Hardware, spec: api.Resources | None, cfg: settings.Settings) -> Obj:
    """Container requests and limits, with the GPU limit from the hardware profile."""
    requests: Obj = dict(spec.requests or {}) if spec else {}
    limits: Obj = dict(spec.limits or {}) if spec else {}
    if hw.pool == "gpu":
        limits[cfg.gpu.resource] = hw.gpu.count if hw.gpu else 1
        requests.pop(cfg.gpu.resource, None)  # extended resources: the limit implies the request
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def describe(hw: api.Hardware, cfg: settings.Settings) -> str:
    """One line for people: what nodes this profile needs (used in Unschedulable messages)."""
    parts = [f"{k}={v}" for k, v in node_selector(hw, cfg).items()]
    if hw.pool == "gpu":
        parts.append(f"{hw.gpu.count if hw.gpu else 1} allocatable {cfg.gpu.resource}")
    elif hw.precision == "bf16":
        parts.append("one of " + ", ".join(f"{label}=true" for label in cfg.xeon.bf16_labels))
    return f"{hw.pool} pool node with " + (", ".join(parts) if parts else "no special labels")
