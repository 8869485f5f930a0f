"""The search: an Optuna study over a ``space.Space``, within a time budget.

Optuna chooses the candidates (its TPE sampler, multivariate over the conditional knobs), and
the first trial is always the model's own config, so the search starts from what the user has
and the winner can only be as good or better; the next few are the space's informed starts
(``space.Space.starts``: the corners where throughput tends to be), then TPE takes over. Each
trial loads its config into the worker, passes the precision guard when its precision is not
fp32, and walks its concurrency ramp; after every window its capacity so far is reported to
Optuna, whose pruner ends hopeless trials early (``hopeless``: after the first
``warmup_steps`` windows, a trial that has stopped scaling and has reached less than ``ratio``
of what the best finished trial had reached by the same concurrency). A candidate Optuna asks
for twice is answered from the first measurement.

The objective is the capacity at the SLO (throughput whose p95 meets it). One short ramp is a
noisy reading (on 2 shared cores, +-10% between two runs of one config), and the highest of
many noisy readings is mostly luck; so the last ``confirm_share`` of the budget re-measures
the ``confirm_top`` best trials (round after round while time is left, ``confirm_rounds`` at
most) and a trial's capacity is the mean of its measurements. The winner is the highest
capacity among the re-measured trials (all measured trials when none was), and among those
within 2% of it, the one with the lowest p95 at the reference rate (the second objective:
latency at a given rate). The search stops at the deadline; a ramp cut by it keeps the
windows it measured.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import optuna

from polyserve_worker.tuning import guarding, loadgen, measuring, space

logger = logging.getLogger(__name__)

#: Trials within this share of the best capacity are ranked by latency at the reference rate.
TIE = 0.02

MEASURED, PRUNED, REJECTED, FAILED = "measured", "pruned", "rejected", "failed"


@dataclass
class Trial:
    """One candidate and what became of it."""

    number: int
    candidate: space.Candidate
    state: str = MEASURED
    curve: measuring.Curve = field(default_factory=measuring.Curve)
    capacity: float = 0.0
    load_s: float | None = None
    note: str = ""
    verdict: guarding.Verdict | None = None
    label: str = ""  # "your config" for the model's own
    seconds: float = 0.0
    started_s: float = 0.0  # since the search began
    capacities: list[float] = field(default_factory=list)
    """The capacity of every measurement, the first one first (``capacity`` is their mean)."""

    @property
    def confirmed(self) -> bool:
        """Measured more than once (see the module docstring)."""
        return len(self.capacities) > 1

    def best(self, slo_ms: float) -> measuring.Point | None:
        return self.curve.best(slo_ms)


@dataclass(frozen=True)
class Plan:
    """What the search measures and how long it may take."""

    slo_ms: float
    deadline: float  # on ``clock``
    ramp: measuring.RampPlan = field(default_factory=measuring.RampPlan)
    tolerance: float = guarding.DEFAULT_TOLERANCE
    seed: int = 0
    max_trials: int | None = None
    candidates: tuple[space.Candidate, ...] | None = None
    """Measure exactly these, in order (an exhaustive grid), instead of sampling."""
    prune_ratio: float = 0.5
    prune_warmup_steps: int = 3
    confirm_share: float = 0.15
    """Of the time from the start to the deadline, the part kept for re-measuring the best."""
    confirm_top: int = 3
    confirm_rounds: int = 2


class Server(Protocol):
    """What the search needs of the worker (``measuring.Worker``)."""

    @property
    def pid(self) -> int: ...

    def load(self, name: str, config: Any) -> float: ...

    def infer(self, name: str, inputs: Sequence[tuple[loadgen.Tensor, Any]]) -> dict[str, Any]: ...


class Observer(Protocol):
    """Told what happens, for a progress line."""

    def started(self, number: int, candidate: space.Candidate) -> None: ...

    def window(self, number: int, point: measuring.Point) -> None: ...

    def finished(self, trial: Trial, best: Trial | None) -> None: ...


#: A window this much above the one before (the concurrency doubled) is a trial still scaling.
SCALING = 1.5


def hopeless(
    values: Mapping[int, float],
    step: int,
    finished: Sequence[Mapping[int, float]],
    ratio: float,
    warmup_steps: int,
    scaling: float = SCALING,
) -> bool:
    """The pruning rule: at ``step`` (past ``warmup_steps``), the trial's value (the capacity
    reached so far, ``values[step]``) is below ``ratio`` times the most any finished trial had
    reached by that step (its last value at or before it: a ramp that ended earlier keeps its
    final value), and it has stopped scaling: it gained less than ``scaling`` times its value
    at the step before. A trial whose throughput still grows with its concurrency is bound by
    its latency, not its throughput (a long queue delay, a full batch to wait for), and at low
    concurrency says little about its capacity: the grids of bench/tuning.py won with
    ``max_queue_delay`` 4 ms configs that the rule without that clause pruned at c=8."""
    value = values[step]
    if step < warmup_steps:
        return False
    before = values.get(step - 1)
    if before is not None and value >= scaling * before:
        return False
    reached = []
    for values in finished:
        earlier = [s for s in values if s <= step]
        if earlier:
            reached.append(values[max(earlier)])
    return bool(reached) and value < ratio * max(reached)


class BehindTheBest(optuna.pruners.BasePruner):
    """Optuna's pruner interface over ``hopeless``; finished = complete trials."""

    def __init__(self, ratio: float = 0.5, warmup_steps: int = 3) -> None:
        self.ratio = ratio
        self.warmup_steps = warmup_steps

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        finished = [t.intermediate_values for t in complete if t.intermediate_values]
        return hopeless(trial.intermediate_values, step, finished, self.ratio, self.warmup_steps)


class Search:
    """One study against one worker (see the module docstring)."""

    def __init__(
        self,
        model: str,
        space_: space.Space,
        server: Server,
        load: loadgen.LoadSpec,
        plan: Plan,
        observer: Observer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.space = space_
        self.server = server
        self.load = load
        self.plan = plan
        self.observer = observer
        self.clock = clock
        self.trials: list[Trial] = []
        self._seen: dict[space.Candidate, Trial] = {}
        self._reference: list[dict[str, Any]] | None = None
        self._sample = guarding.sample(load.tensors())
        self._began = clock()
        self._search_deadline = plan.deadline

    def run(self) -> list[Trial]:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            # multivariate and group TPE are marked experimental; they are what a
            # conditional space needs.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.plan.seed, multivariate=True, group=True, n_startup_trials=5
            )
        study = optuna.create_study(
            direction="maximize",
            sampler=sampler,
            pruner=BehindTheBest(self.plan.prune_ratio, self.plan.prune_warmup_steps),
        )
        queue = list(self.plan.candidates or [self.space.baseline(), *self.space.starts()])
        for candidate in queue:
            study.enqueue_trial(self.space.params(candidate))
        n_trials = len(queue) if self.plan.candidates is not None else self.plan.max_trials
        self._search_deadline = self.plan.deadline - self.plan.confirm_share * max(
            0.0, self.plan.deadline - self._began
        )

        def stop_at_deadline(study: optuna.study.Study, _: optuna.trial.FrozenTrial) -> None:
            if self.clock() + self.plan.ramp.step_seconds() > self._search_deadline:
                study.stop()

        remaining = self._search_deadline - self.clock()
        if remaining > 0:
            study.optimize(
                self._objective,
                n_trials=n_trials,
                timeout=remaining,
                callbacks=[stop_at_deadline],
            )
        self.confirm()
        return self.trials

    def confirm(self) -> None:
        """Re-measure the ``confirm_top`` best measured trials, round after round, while a
        whole ramp of each (as long as its first one took) fits before the deadline."""
        measured = [t for t in self.trials if t.state == MEASURED and t.capacity > 0]
        top = sorted(measured, key=lambda t: (-t.capacity, t.number))[: self.plan.confirm_top]
        if len(top) < 2:
            return  # nothing to rank
        for _ in range(self.plan.confirm_rounds):
            for record in top:
                if self.clock() + record.seconds * 1.1 > self.plan.deadline:
                    return
                self.observer.started(record.number, record.candidate)
                try:
                    self.server.load(self.model, self.space.apply(record.candidate))
                except measuring.MeasureError as exc:
                    logger.warning("re-measuring trial %d: %s", record.number, exc)
                    return

                def on_step(
                    _step: int, curve: measuring.Curve, number: int = record.number
                ) -> bool:
                    self.observer.window(number, curve.points[-1])
                    return True

                spec = replace(self.load, watch_pid=self.server.pid)
                curve = measuring.ramp(
                    spec, self.plan.slo_ms, self.plan.ramp, self.plan.deadline, on_step, self.clock
                )
                if curve.cut:
                    return  # a cut ramp reads low: keep the measurements that were whole
                record.capacities.append(curve.capacity(self.plan.slo_ms))
                record.capacity = sum(record.capacities) / len(record.capacities)
                record.note = "re-measured: " + ", ".join(f"{c:.0f}" for c in record.capacities)
                record.note += f" infer/s (mean {record.capacity:.0f})"
                self.observer.finished(record, self.winner())

    def winner(self) -> Trial | None:
        return choose(self.trials, self.reference_rate())

    def reference_rate(self) -> float:
        """The rate of the second objective: half the first trial's capacity (a rate every
        candidate worth having sustains), else half the best."""
        first = next((t for t in self.trials if t.capacity > 0), None)
        return (first.capacity if first else 0.0) / 2

    def _objective(self, trial: optuna.trial.Trial) -> float:
        candidate = self.space.suggest(trial)
        if candidate in self._seen:
            earlier = self._seen[candidate]
            trial.set_user_attr("repeat_of", earlier.number)
            if earlier.state == PRUNED:
                raise optuna.TrialPruned()
            return earlier.capacity
        record = Trial(
            number=len(self.trials), candidate=candidate, started_s=self.clock() - self._began
        )
        if not self.trials and self.plan.candidates is None:
            record.label = "your config"
        self.trials.append(record)
        self._seen[candidate] = record
        self.observer.started(record.number, candidate)
        began = self.clock()
        try:
            return self._measure(trial, record)
        finally:
            record.seconds = self.clock() - began
            self.observer.finished(record, self.winner())

    def _measure(self, trial: optuna.trial.Trial, record: Trial) -> float:
        candidate = record.candidate
        problem = self.space.problem(candidate)
        if problem is not None:
            record.state, record.note = REJECTED, problem
            return 0.0
        try:
            if candidate.precision != "fp32" and self._reference is None:
                self._reference_from(replace(candidate, precision="fp32"))
            record.load_s = self.server.load(self.model, self.space.apply(candidate))
            if candidate.precision == "fp32" and self._reference is None:
                self._reference = self._answers()
        except measuring.MeasureError as exc:
            record.state, record.note = FAILED, str(exc)
            return 0.0
        if candidate.precision != "fp32":
            assert self._reference is not None
            record.verdict = guarding.compare(
                self._reference, self._answers(), candidate.precision, self.plan.tolerance
            )
            if not record.verdict.accepted:
                record.state, record.note = REJECTED, record.verdict.describe()
                return 0.0
        pruned = False

        def on_step(step: int, curve: measuring.Curve) -> bool:
            nonlocal pruned
            self.observer.window(record.number, curve.points[-1])
            trial.report(curve.capacity(self.plan.slo_ms), step)
            pruned = trial.should_prune()
            return not pruned

        spec = replace(self.load, watch_pid=self.server.pid)
        record.curve = measuring.ramp(
            spec, self.plan.slo_ms, self.plan.ramp, self._search_deadline, on_step, self.clock
        )
        record.capacity = record.curve.capacity(self.plan.slo_ms)
        record.capacities = [record.capacity]
        if pruned:
            record.state = PRUNED
            record.note = "pruned: far behind the best at the same concurrency, no longer scaling"
            raise optuna.TrialPruned()
        if record.curve.cut:
            record.note = "ramp cut by the budget"
        return record.capacity

    def _reference_from(self, candidate: space.Candidate) -> None:
        self.server.load(self.model, self.space.apply(candidate))
        self._reference = self._answers()

    def _answers(self) -> list[dict[str, Any]]:
        return [self.server.infer(self.model, request) for request in self._sample]


def choose(trials: Sequence[Trial], rate: float) -> Trial | None:
    """The winner: the highest capacity, among the re-measured trials when there are any (a
    single reading above their means is more likely luck than a better config); among those
    within ``TIE`` of it, the lowest p95 at ``rate``; None when no trial met the SLO."""
    measured = [t for t in trials if t.state == MEASURED and t.capacity > 0]
    if not measured:
        return None
    confirmed = [t for t in measured if t.confirmed]
    measured = confirmed or measured
    top = max(t.capacity for t in measured)
    close = [t for t in measured if t.capacity >= (1 - TIE) * top]

    def latency(t: Trial) -> float:
        found = t.curve.latency_at(rate) if rate > 0 else None
        return found if found is not None else math.inf

    return min(close, key=lambda t: (latency(t), -t.capacity, t.number))
