"""The precision guard: a lower precision is accepted only when its outputs stay within a
tolerance of fp32's on a sample.

A faster bf16 or fp16 config that changes the answers is not a better config. Before a
candidate in a lower precision is measured, the tuner sends the same seeded sample of
requests to it and to the model in fp32 (same backend family, loaded once before the search)
and compares every output: the largest absolute difference, and that difference relative to
the largest fp32 output magnitude (the ``error`` the tolerance bounds, 1% by default: it reads
the same whatever the outputs' scale). For classifier-shaped outputs (2-D floats) it also
reports how many rows keep their argmax. The verdict is kept with the trial and printed in
the report, accepted or not. Pure: the requests are made by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyserve_worker.tuning import loadgen

#: Largest difference accepted, relative to the largest fp32 output magnitude.
DEFAULT_TOLERANCE = 0.01
#: Requests in the sample.
SAMPLE_SIZE = 8


@dataclass(frozen=True)
class Verdict:
    """How far a precision's outputs are from fp32's on the sample, and whether that is
    within the tolerance."""

    precision: str
    max_abs_diff: float
    error: float
    """max |candidate - fp32| / max |fp32|, over every output."""
    tolerance: float
    top1_agreement: float | None = None
    """Share of rows whose argmax agrees (2-D float outputs), None otherwise."""

    @property
    def accepted(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.tolerance

    def describe(self) -> str:
        top1 = (
            f", top-1 agrees on {100 * self.top1_agreement:.0f}%"
            if self.top1_agreement is not None
            else ""
        )
        verdict = "accepted" if self.accepted else "rejected"
        return (
            f"{self.precision} vs fp32: max |diff| {self.max_abs_diff:.3g}, "
            f"{100 * self.error:.2f}% of the output range (tolerance "
            f"{100 * self.tolerance:g}%){top1}: {verdict}"
        )


Outputs = Mapping[str, Any]


def sample(
    tensors: Sequence[loadgen.Tensor], size: int = SAMPLE_SIZE, seed: int = 1
) -> list[list[tuple[loadgen.Tensor, Any]]]:
    """``size`` requests of seeded random inputs, the same every run."""
    rng = np.random.default_rng(seed)
    return [[(t, loadgen.random_data(t, rng)) for t in tensors] for _ in range(size)]


def compare(
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
    precision: str,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verdict:
    """The verdict on ``candidate``'s answers to the sample against fp32's ``reference``."""
    largest_diff = 0.0
    largest_ref = 0.0
    rows = agree = 0
    for ref_outputs, cand_outputs in zip(reference, candidate, strict=True):
        for name, ref in ref_outputs.items():
            want = np.asarray(ref, dtype=np.float64)
            got = np.asarray(cand_outputs.get(name), dtype=np.float64)
            if got.shape != want.shape or not np.all(np.isfinite(got)):
                return Verdict(precision, float("inf"), float("inf"), tolerance)
            if want.size:
                largest_diff = max(largest_diff, float(np.max(np.abs(got - want))))
                largest_ref = max(largest_ref, float(np.max(np.abs(want))))
            if want.ndim == 2 and want.shape[1] > 1:
                rows += want.shape[0]
                agree += int(np.sum(np.argmax(want, axis=1) == np.argmax(got, axis=1)))
    error = largest_diff / largest_ref if largest_ref > 0 else largest_diff
    return Verdict(
        precision=precision,
        max_abs_diff=largest_diff,
        error=error,
        tolerance=tolerance,
        top1_agreement=agree / rows if rows else None,
    )
