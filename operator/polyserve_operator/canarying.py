"""A canary rollout's reconcile step: observe, ask the state machine, say what to run.

Given a workload under the Canary strategy and what the indexes show, this builds the
``rollout.Observation`` (ready pods per revision, why a canary is stuck, a person's action
from the ``polyserve.io/rollout-action`` annotation, and the traffic since the last
measurement: from Prometheus when ``prometheus.url`` is set, else scraped from the workers'
own ``/metrics``), calls ``rollout.plan``, and turns
the plan into the objects to apply, the replica counts to set on Deployments whose template
it does not own any more (an older stable revision), and what to delete. The traffic
baselines of running analyses are kept in memory: after an operator restart the current
interval starts again (its steps and timers are in status and resume as they were).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from polyserve_operator import analysis, api, conditions, observe, rollout, settings
from polyserve_operator.render import canaries, networking, scaling, workloads

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
ACTION_ANNOTATION = "polyserve.io/rollout-action"


@dataclass
class Step:
    """What one reconcile of a canary workload does."""

    plan: rollout.Plan
    desired: list[Obj]
    """Objects to apply (fully rendered: this spec's revision, Services, route, mirror)."""
    scale: dict[str, int] = field(default_factory=dict)
    """Deployment name -> replicas, for revisions this spec no longer renders."""
    doomed: list[Obj] = field(default_factory=list)
    """Owned objects the rollout no longer wants (older revisions, earlier canaries' Services)."""
    stable_deployment: Obj | None = None
    """What the Ready condition follows: the revision that serves."""


@dataclass
class _Baseline:
    """Where each pod's counters stood when a window began, and their latest reading since:
    a pod that leaves during the window (scaled down, replaced, not ready, not answering)
    keeps what it served until it was last read."""

    at: datetime.datetime
    canary: Mapping[str, analysis.Sample]
    stable: Mapping[str, analysis.Sample]
    canary_seen: dict[str, analysis.Sample] = field(default_factory=dict)
    stable_seen: dict[str, analysis.Sample] = field(default_factory=dict)

    def read(
        self, canary: Mapping[str, analysis.Sample], stable: Mapping[str, analysis.Sample]
    ) -> None:
        self.canary_seen.update(canary)
        self.stable_seen.update(stable)


class Canaries:
    """Canary reconciles over one set of settings, with the analyses' traffic baselines."""

    def __init__(self, cfg: settings.Settings) -> None:
        self.cfg = cfg
        self._baselines: dict[tuple[str, str], _Baseline] = {}
        self.prometheus = observe.PromQL(cfg.prometheus) if cfg.prometheus.url else None

    def step(
        self,
        w: workloads.Workload,
        body: Mapping[str, Any],
        children: observe.Children,
        now: datetime.datetime,
        *,
        stable_size: int | None = None,
        warm: Mapping[str, int] | None = None,
    ) -> Step:
        """One reconcile. ``stable_size``: the stable revision's own size (a tier move);
        ``warm``: other revisions to keep running at a size (tiers kept warm)."""
        canary = canaries.canary_of(w)
        assert canary is not None
        rev = workloads.revision(w, self.cfg)
        previous: Obj = dict((body.get("status") or {}).get("rollout") or {})
        existing = None if previous.get("stableRevision") else _running_revision(children)
        stable = str(previous.get("stableRevision") or existing or rev)
        canary_pods = children.pods_of(rev) if rev != stable else []
        stable_pods = children.pods_of(stable)
        key = (w.owner.namespace, w.name)
        traffic = None
        measuring = _analysing(canary, previous) and rev != stable
        canary_now: dict[str, analysis.Sample] = {}
        stable_now: dict[str, analysis.Sample] = {}
        if measuring and self.prometheus is not None:
            traffic = self._from_prometheus(w, children, previous, rev, stable, now)
        elif measuring:
            canary_now, stable_now = _read(w, canary_pods, stable_pods, rev)
            base = self._baselines.get(key)
            if base is not None:
                base.read(canary_now, stable_now)
                traffic = analysis.Window(
                    canary=analysis.window(base.canary, base.canary_seen),
                    stable=analysis.window(base.stable, base.stable_seen),
                    seconds=(now - base.at).total_seconds(),
                )
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        action = annotations.get(ACTION_ANNOTATION)
        obs = rollout.Observation(
            canary_ready=sum(1 for p in canary_pods if observe.pod_ready(p)),
            stable_ready=sum(1 for p in stable_pods if observe.pod_ready(p)),
            canary_pods=len(canary_pods),
            stable_pods=len(stable_pods),
            canary_trouble=_trouble(canary_pods),
            traffic=traffic,
            action=action if action and action != previous.get("lastAction") else None,
            existing_revision=existing,
        )
        gateway = canaries.routing(w)
        spec = rollout.Spec(
            canary,
            _replicas(w, children, stable),
            rev,
            gateway=gateway is not None,
            stable_size=stable_size,
        )
        plan = rollout.plan(spec, previous or None, obs, now)
        if plan.reset_window and self.prometheus is None:
            if not measuring:  # a step just started: read where the counters stand now
                canary_now, stable_now = _read(w, canary_pods, stable_pods, rev)
            self._baselines[key] = _Baseline(now, canary_now, stable_now)
        if plan.canary_revision is None:
            self._baselines.pop(key, None)
        return self._objects(w, plan, children, rev, gateway, warm or {})

    def _from_prometheus(
        self,
        w: workloads.Workload,
        children: observe.Children,
        previous: Mapping[str, Any],
        rev: str,
        stable: str,
        now: datetime.datetime,
    ) -> analysis.Window | None:
        """The traffic since the last measurement (or the step's start), from PromQL: no
        baseline to keep, so a restarted operator measures the same interval."""
        assert self.prometheus is not None
        times = [previous.get("stepStartedAt")] + [
            m.get("time") for m in previous.get("measurements") or []
        ]
        since = max((t for t in times if t), default=None)
        if since is None:
            return None
        started = rollout.parse_time(since)
        if started is None:
            return None
        seconds = (now - started).total_seconds()
        canary_deployment = children.deployment_of(rev)
        stable_deployment = children.deployment_of(stable)
        if canary_deployment is None or stable_deployment is None or seconds < 1:
            return None
        model = w.entry
        namespace = w.owner.namespace
        try:
            return analysis.Window(
                canary=self.prometheus.sample(
                    namespace, canary_deployment["metadata"]["name"], model, seconds
                ),
                stable=self.prometheus.sample(
                    namespace, stable_deployment["metadata"]["name"], model, seconds, rev
                ),
                seconds=seconds,
            )
        except observe.ApiUnavailable as exc:
            logger.warning("%s/%s: no measurement this time: %s", namespace, w.name, exc)
            return None

    def forget(self, namespace: str, name: str) -> None:
        self._baselines.pop((namespace, name), None)

    def _objects(
        self,
        w: workloads.Workload,
        plan: rollout.Plan,
        children: observe.Children,
        rev: str,
        gateway: api.GatewayRouting | None,
        warm: Mapping[str, int],
    ) -> Step:
        policy = networking.network_policy(w, self.cfg)  # both revisions' pods
        desired: list[Obj] = [policy] if policy is not None else []
        scale: dict[str, int] = {}
        running = {plan.stable_revision, plan.canary_revision} - {None}
        autoscaled = w.scaling is not None
        if rev in running:
            replicas: int | None = (
                plan.stable_replicas if rev == plan.stable_revision else plan.canary_replicas
            )
            if autoscaled and rev == plan.stable_revision:
                replicas = None  # the autoscaler's
            current = children.deployment_of(rev)
            name = current["metadata"]["name"] if current else workloads.revision_name(w, rev)
            per_revision = current is None or workloads.REVISION_LABEL in (
                (current.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
            )
            desired.append(workloads.config_map(w, self.cfg))
            desired.append(
                workloads.deployment(
                    w, self.cfg, name=name, replicas=replicas, per_revision=per_revision
                )
            )
        # The live object (its status is what the Ready condition reads).
        stable_deployment = children.deployment_of(plan.stable_revision)
        if plan.stable_revision != rev and stable_deployment is not None and not autoscaled:
            scale[stable_deployment["metadata"]["name"]] = plan.stable_replicas
        target_revision = {
            "stable": plan.stable_revision,
            "canary": plan.canary_revision,
            "both": None,
        }[plan.target]
        desired.append(workloads.service(w, revision_=target_revision))
        desired.append(
            workloads.service(
                w, name=canaries.stable_service_name(w), revision_=plan.stable_revision
            )
        )
        canary_service = None
        if plan.canary_revision:
            canary_service = canaries.canary_service_name(w, plan.canary_revision)
            desired.append(canaries.canary_service(w, plan.canary_revision))
        if gateway is not None:
            desired.append(canaries.route(w, gateway, plan.canary_revision, plan.weight))
        desired.append(
            canaries.mirror_config(
                w,
                canaries.canary_of(w).mirror if plan.mirror else None,  # type: ignore[union-attr]
                _canary_address(children, canary_service) if canary_service else None,
                plan.canary_revision,
            )
        )
        budget = workloads.disruption_budget(w)
        if budget is not None:
            desired.append(budget)
        if w.scaling is not None:
            target = (
                stable_deployment["metadata"]["name"]
                if stable_deployment is not None
                else workloads.revision_name(w, plan.stable_revision)
            )
            desired += scaling.objects(w, w.scaling, target, self.cfg.prometheus.url)
        doomed = []
        for d in children.deployments:
            revision = observe.revision_of(d)
            if revision in running or d["metadata"].get("deletionTimestamp"):
                continue
            if revision is not None and revision in warm:
                scale[d["metadata"]["name"]] = warm[revision]
            else:
                doomed.append(d)
        for service in children.services:
            name = service["metadata"]["name"]
            if (
                canaries.is_canary_service(w, service)
                and name != canary_service
                and not service["metadata"].get("deletionTimestamp")
            ):
                doomed.append(service)  # an earlier canary's: its pods may still serve
        return Step(plan, desired, scale, doomed, stable_deployment)


def _read(
    w: workloads.Workload, canary_pods: list[Obj], stable_pods: list[Obj], revision: str
) -> tuple[dict[str, analysis.Sample], dict[str, analysis.Sample]]:
    """Each pod's counters now, from its own /metrics: the canary's, and stable's with the
    mirror's counts of copies sent to ``revision``."""
    canary = observe.scrape(canary_pods, w.entry, workloads.METRICS_PORT)
    stable = observe.scrape(stable_pods, w.entry, workloads.METRICS_PORT, mirror_revision=revision)
    return canary, stable


def _replicas(w: workloads.Workload, children: observe.Children, stable: str) -> int:
    """The replicas a rollout plans with: an autoscaler's current count when one owns them."""
    if w.scaling is None:
        return w.replicas
    current = children.deployment_of(stable)
    count = ((current or {}).get("spec") or {}).get("replicas")
    return int(count) if count is not None else max(w.scaling.min_replicas, 1)


def _analysing(canary: api.Canary, previous: Mapping[str, Any]) -> bool:
    """Whether the rollout stands on an analysis step (the traffic must be read)."""
    index = previous.get("stepIndex")
    if previous.get("phase") != "Progressing" or index is None:
        return False
    steps = canary.steps
    return 0 <= int(index) < len(steps) and steps[int(index)].analysis is not None


def _running_revision(children: observe.Children) -> str | None:
    """The revision that serves when a resource first becomes a canary: the Deployment
    with the most ready pods."""
    candidates = [
        (int((d.get("status") or {}).get("readyReplicas") or 0), observe.revision_of(d))
        for d in children.deployments
        if observe.revision_of(d)
    ]
    candidates.sort(reverse=True)
    return candidates[0][1] if candidates else None


def _trouble(pods: list[Obj]) -> str | None:
    problems = conditions.pod_problems(pods, "matching node")
    return f"{problems[0].reason}: {problems[0].message}" if problems else None


def _canary_address(children: observe.Children, service: str) -> str | None:
    """The canary's gRPC address as the stable pods reach it: its Service's cluster IP
    (a name would need cluster DNS, which a local fleet does not have)."""
    found = children.present("Service", service)
    address = ((found or {}).get("spec") or {}).get("clusterIP")
    if not address or address == "None":
        return None
    return f"{address}:{workloads.GRPC_PORT}"
