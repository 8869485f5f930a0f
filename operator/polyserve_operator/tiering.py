"""A tiered model's reconcile step: measure its load, decide its tier, move by canary.

A model with ``spec.tiers`` runs on one tier at a time. Each reconcile measures its load over
all its pods (requests per second and p95 latency: from Prometheus when ``prometheus.url`` is
set, else from the pods' ``/metrics`` against a baseline kept in memory), asks ``tiers.decide``
for the tier it should be on, and renders the model for that tier: its hardware, replicas
and resources. When that differs from what serves, the revision differs, and the canary
machinery (``canarying``) runs the move: the target tier's Deployment starts next to the
current one, traffic shifts in the tiering steps, the old tier scales to its minimum. The
tier decision is told when the move has arrived (the target tier's revision serves) or is
blocked (its pods cannot be scheduled: no node for that tier yet).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from polyserve_operator import analysis, api, observe, render, rollout, settings, tiers
from polyserve_operator.render import workloads

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
#: Shortest window a rate is measured over from the pods' counters.
RATE_WINDOW_SECONDS = 5.0
DEFAULT_STEPS = [api.CanaryStep(set_weight=50), api.CanaryStep(set_weight=100)]


@dataclass(frozen=True)
class _Reading:
    at: datetime.datetime
    pods: Mapping[str, analysis.Sample]


@dataclass(frozen=True)
class Move:
    """What this reconcile runs: the workload of the chosen tier, and the move's settings."""

    workload: workloads.Workload
    decision: tiers.Decision
    stable_size: int | None
    warm: dict[str, int]
    serving: workloads.Workload
    """The workload of the tier that serves now (``status.tier.current``): status shows its
    pool and backend until a move has arrived."""


def tier_model(im: api.InferenceModel, tier: api.Tier, canary: api.Canary) -> api.InferenceModel:
    """The model as it runs on ``tier``: that tier's hardware, replicas and resources, moved
    by canary; with spec.scaling, the tier's replica bounds are the autoscaler's."""
    scaling = im.spec.scaling
    if scaling is not None:
        scaling = scaling.model_copy(
            update={"min_replicas": tier.replicas.min, "max_replicas": tier.replicas.max}
        )
    spec = im.spec.model_copy(
        update={
            "hardware": tier.hardware,
            "replicas": tier.replicas.max,
            "resources": tier.resources or im.spec.resources,
            "rollout": api.Rollout(strategy="Canary", canary=canary),
            "scaling": scaling,
        }
    )
    return im.model_copy(update={"spec": spec})


def move_canary(im: api.InferenceModel, tiering: api.Tiering) -> api.Canary:
    """How a move between tiers runs: the tiering steps, the model's own canary analysis and
    mirror when it has them, the provisioning deadline as the progress deadline."""
    own = im.spec.rollout.canary if im.spec.rollout and im.spec.rollout.canary else None
    deadline = int(rollout.seconds(tiering.provisioning_deadline)) + 1
    return api.Canary(
        steps=tiering.steps or DEFAULT_STEPS,
        analysis=own.analysis if own else None,
        mirror=own.mirror if own else None,
        progress_deadline_seconds=deadline,
        abort_scale_down_delay_seconds=0,
    )


class Tiers:
    """Tier decisions for every tiered model, with their load readings kept in memory."""

    def __init__(self, cfg: settings.Settings) -> None:
        self.cfg = cfg
        self._readings: dict[tuple[str, str], _Reading] = {}
        self._last: dict[tuple[str, str], tiers.Load] = {}
        self._parked: dict[tuple[str, str], dict[str, analysis.Sample]] = {}
        self.prometheus = observe.PromQL(cfg.prometheus) if cfg.prometheus.url else None

    def plan(
        self,
        im: api.InferenceModel,
        body: Mapping[str, Any],
        children: observe.Children,
        now: datetime.datetime,
    ) -> Move:
        assert im.spec.tiers is not None
        status = body.get("status") or {}
        tier_list = tiers.measured(im.spec.tiers, status.get("tuning"))
        tiering = im.spec.tiering or api.Tiering()
        canary = move_canary(im, tiering)
        previous: Obj = dict(status.get("tier") or {})
        revisions = [
            workloads.revision(render.model_workload(tier_model(im, t, canary)), self.cfg)
            for t in tier_list
        ]
        load = self._load(im, children, now)
        arrived, blocked = _progress(previous, status.get("rollout") or {}, tier_list, revisions)
        decision = tiers.decide(
            tier_list, tiering, previous, load, now, arrived=arrived, blocked=blocked
        )
        target = tier_list[decision.target]
        w = render.model_workload(tier_model(im, target, canary))
        names = [t.name for t in tier_list]
        current = names.index(decision.status["current"])
        stable_size = tier_list[current].replicas.max if current != decision.target else None
        warm = {
            revisions[i]: t.replicas.min
            for i, t in enumerate(tier_list)
            if i not in (current, decision.target) and t.replicas.min > 0
        }
        serving = (
            w
            if current == decision.target
            else render.model_workload(tier_model(im, tier_list[current], canary))
        )
        return Move(w, decision, stable_size, warm, serving)

    def forget(self, namespace: str, name: str) -> None:
        self._readings.pop((namespace, name), None)
        self._last.pop((namespace, name), None)
        self._parked.pop((namespace, name), None)

    def _load(
        self, im: api.InferenceModel, children: observe.Children, now: datetime.datetime
    ) -> tiers.Load:
        key = (im.metadata.namespace, im.metadata.name)
        if self.prometheus is not None:
            try:
                # Every Deployment of the workload: its own (RollingUpdate) or one per
                # revision (a canary, a tier move), so the pods of each count.
                owners = [d["metadata"]["name"] for d in children.deployments]
                sample = self.prometheus.sample(
                    im.metadata.namespace, owners or [im.metadata.name], im.metadata.name, 60
                )
            except observe.ApiUnavailable as exc:
                logger.warning("%s/%s: no load reading: %s", *key, exc)
                return self._last.get(key, tiers.Load(None))
            return _load_of(sample, 60.0)
        pods = observe.scrape(children.pods, im.metadata.name, workloads.METRICS_PORT)
        ready = {
            p["metadata"]["name"]
            for p in children.pods
            if observe.pod_ready(p) and (p.get("status") or {}).get("podIP")
        }
        if ready - set(pods):
            # A ready pod did not answer (a busy pod's /metrics can time out): a rate without
            # its traffic would read as the load falling, and its whole counter would count
            # as new next time. Keep the last reading; measure again at the next refresh.
            return self._last.get(key, tiers.Load(None))
        before = self._readings.get(key)
        if before is None:
            self._readings[key] = _Reading(now, pods)
            return self._last.get(key, tiers.Load(None))
        seconds = (now - before.at).total_seconds()
        if seconds < RATE_WINDOW_SECONDS:
            return self._last.get(key, tiers.Load(None))
        existing = {p["metadata"]["name"] for p in children.pods}
        parked = {p: s for p, s in self._parked.get(key, {}).items() if p in existing}
        departed = set(before.pods) - set(pods)
        # A pod that stopped being ready keeps its counts as they are now (read if it still
        # answers, else the last seen): when it serves again, only what it serves from then
        # on is new, not its whole counter (a spike).
        gone = [p for p in children.pods if p["metadata"]["name"] in departed]
        still = observe.scrape(gone, im.metadata.name, workloads.METRICS_PORT, ready_only=False)
        parked.update({p: still.get(p, before.pods[p]) for p in departed if p in existing})
        self._parked[key] = parked
        if departed:
            # What a pod served between the last reading and its going (scaled down after a
            # move, deleted, unready) is unknown: a rate without it reads as the load falling.
            # Start a new window instead.
            self._readings[key] = _Reading(now, pods)
            return self._last.get(key, tiers.Load(None))
        load = _load_of(analysis.window({**parked, **before.pods}, pods), seconds)
        for pod in pods:
            parked.pop(pod, None)
        self._readings[key] = _Reading(now, pods)
        self._last[key] = load
        return load


def _load_of(sample: analysis.Sample, seconds: float) -> tiers.Load:
    p95 = sample.request_duration.quantile(0.95)
    return tiers.Load(
        rate=sample.requests / seconds if seconds > 0 else None,
        p95_ms=p95 * 1000 if p95 is not None else None,
    )


def _progress(
    tier: Mapping[str, Any],
    rollout_status: Mapping[str, Any],
    tier_list: list[api.Tier],
    revisions: list[str],
) -> tuple[bool, str | None]:
    """Whether the move under way has arrived, or why its target tier gets no pods."""
    target = tier.get("target")
    names = [t.name for t in tier_list]
    if not target or target not in names:
        return False, None
    wanted = revisions[names.index(target)]
    phase = rollout_status.get("phase")
    if phase == "Healthy" and rollout_status.get("stableRevision") == wanted:
        return True, None
    message = str(rollout_status.get("message") or "")
    if rollout_status.get("canaryRevision") == wanted and (
        "CapacityBlocked" in message or phase == "RolledBack"
    ):
        return False, message
    return False, None
