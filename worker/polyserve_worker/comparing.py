"""Whether a canary's output agrees with the stable output: the rules of request mirroring.

A canary that answers 200 with wrong numbers (a bad conversion, a wrong precision, a
broken preprocessing step) passes every success-rate and latency check; comparing its
outputs with the stable model's on the same live requests catches it. Each output is
compared under one ``Rule``:

- datatype and shape must match first, whatever the rule;
- ``maxAbsDiff`` / ``maxRelDiff``: every element within either bound (the relative bound
  is taken against the stable value, the reference);
- ``top1``: for classifiers, the argmax along the last axis agrees for every row;
- ``exact``: every element equal; the default for BYTES, BOOL and integer outputs, and
  the only comparison BYTES and BOOL have;
- a floating-point output with no rule agrees within ``DEFAULT_FLOAT_RULE``.

NaN agrees only with NaN, an infinity only with the same infinity. Pure numpy: this module
knows nothing about where the arrays came from or where the verdicts go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from polyserve_worker import errors, tensors
from polyserve_worker.tensors import Array

FLOATS = frozenset({"FP16", "BF16", "FP32", "FP64"})
#: Compared element by element for equality only: a distance means nothing for them.
UNORDERED = frozenset({"BYTES", "BOOL"})


class Rule(BaseModel):
    """How one output is compared (``compare:`` in the mirror file; every check named must
    hold). An empty rule means the default for the output's datatype."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    max_abs_diff: float | None = Field(
        default=None, ge=0, description="Largest absolute difference allowed per element."
    )
    max_rel_diff: float | None = Field(
        default=None,
        ge=0,
        description="Largest difference allowed per element, as a share of the stable value.",
    )
    top1: bool = Field(
        default=False,
        description="The argmax along the last axis must agree for every row (classifiers).",
    )
    exact: bool = Field(default=False, description="Every element must be equal.")

    @model_validator(mode="after")
    def _exact_alone(self) -> Rule:
        if self.exact and (
            self.max_abs_diff is not None or self.max_rel_diff is not None or self.top1
        ):
            raise ValueError("exact cannot be combined with maxAbsDiff, maxRelDiff or top1")
        return self

    @property
    def empty(self) -> bool:
        return not (
            self.exact
            or self.top1
            or self.max_abs_diff is not None
            or self.max_rel_diff is not None
        )


#: A floating-point output with no rule agrees within these bounds: tight enough that a
#: canary computing in a lower precision (BF16 carries ~3 significant digits) disagrees,
#: loose enough that the same model on other hardware or kernels (a few ULPs of FP32) agrees.
DEFAULT_FLOAT_RULE = Rule(max_abs_diff=1e-5, max_rel_diff=1e-3)
EXACT = Rule(exact=True)


@dataclass(frozen=True)
class Verdict:
    """One output's comparison: whether it agrees, the largest absolute difference (numeric
    outputs of matching datatype and shape; finite differences only) and why not."""

    agree: bool
    max_abs_diff: float | None = None
    reason: str = ""


def compare(stable: Array, canary: Array, rule: Rule | None = None) -> Verdict:
    """Compare a canary's output with the stable one under ``rule`` (None: the default)."""
    try:
        datatype = tensors.datatype_of(stable)
        canary_type = tensors.datatype_of(canary)
    except errors.PolyserveError as exc:
        return Verdict(False, reason=str(exc))
    if datatype != canary_type:
        return Verdict(False, reason=f"datatype {canary_type}, stable has {datatype}")
    if stable.shape != canary.shape:
        return Verdict(False, reason=f"shape {list(canary.shape)}, stable has {list(stable.shape)}")
    if datatype != "BYTES" and np.array_equal(stable, canary):
        # The common case of a faithful canary, in one call instead of a dozen.
        return Verdict(True, None if datatype == "BOOL" else 0.0)
    if datatype in UNORDERED:
        same = _equal_elements(stable, canary, datatype)
        return Verdict(same, reason="" if same else "elements differ")
    if rule is None or rule.empty:
        rule = DEFAULT_FLOAT_RULE if datatype in FLOATS else EXACT
    a = stable.astype(np.float64)
    b = canary.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)  # NaN where either is NaN or both are the same infinity
        finite = np.isfinite(diff)
        largest = float(diff[finite].max()) if finite.any() else 0.0
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        if rule.exact:
            # Integers natively: float64 cannot tell INT64s above 2**53 apart.
            agree = bool(same.all()) if datatype in FLOATS else np.array_equal(stable, canary)
            return Verdict(agree, largest, "" if agree else f"largest difference {largest:g}")
        reasons = []
        if rule.max_abs_diff is not None or rule.max_rel_diff is not None:
            within = np.zeros(diff.shape, dtype=bool)
            if rule.max_abs_diff is not None:
                within |= diff <= rule.max_abs_diff
            if rule.max_rel_diff is not None:
                within |= diff <= rule.max_rel_diff * np.abs(a)
            if not bool((same | (within & finite)).all()):
                reasons.append(f"largest difference {largest:g} is outside the bounds")
    if rule.top1 and not _top1_agrees(a, b):
        reasons.append("the argmax along the last axis differs")
    return Verdict(not reasons, largest, "; ".join(reasons))


def _equal_elements(stable: Array, canary: Array, datatype: str) -> bool:
    if datatype == "BOOL":
        return bool(np.array_equal(stable, canary))
    # BYTES on the wire is bytes; a backend may produce str, which travels as UTF-8.
    return all(
        _as_bytes(x) == _as_bytes(y)
        for x, y in zip(stable.reshape(-1), canary.reshape(-1), strict=True)
    )


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def _top1_agrees(a: Array, b: Array) -> bool:
    """The argmax along the last axis agrees for every row (a scalar is one class)."""
    if a.ndim == 0 or a.shape[-1] == 0:
        return True
    return bool(np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)))
