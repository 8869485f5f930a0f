"""spec.tuning's reconcile step: start a tuning Job per hardware profile, read its result.

Level-based like the rest: ``status.tuning`` holds, per profile, the key of the inputs being
measured, the phase of its run and the last result, so a restarted operator neither starts a
run twice nor forgets one. Each reconcile, per profile (``render.tuning.profiles``):

- no entry, or an entry for another key (a new artifact, hardware profile, worker image or
  tuning spec): render and apply the Job, phase Running (the previous result is kept, and
  still used by the tiers, until the new one lands);
- Running: the Job is applied again if it is missing (idempotent); once it has the Complete
  condition, its pod's termination message is the tuner's summary (``reporting.summary``):
  phase Succeeded with the result, the node it ran on and its CPU; with Failed, phase Failed
  with the pod's last words;
- Succeeded or Failed for the current key: nothing; a failed run is retried only when the key
  changes (its message says what to change).

Profiles that no longer exist (a tier removed) leave status. The spec is never written: the
result is a recommendation (``polyserve tune --from-status``). No kopf, no client: the handler
applies the Jobs and passes a function that lists a finished Job's pods.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from polyserve_operator import api, rollout, settings
from polyserve_operator.render import tuning as tuning_render
from polyserve_worker import config as worker_config

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
#: A finished Job's name -> its pods.
ReadPods = Callable[[str], list[Obj]]


@dataclass(frozen=True)
class Step:
    """What one reconcile does: Jobs to apply, the new status.tuning, events to post."""

    jobs: list[Obj] = field(default_factory=list)
    status: list[Obj] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


def termination(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(termination message, node) of the tuner's container, newest pod first."""
    for pod in sorted(
        pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp", ""), reverse=True
    ):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != tuning_render.CONTAINER:
                continue
            ended = (status.get("state") or {}).get("terminated") or {}
            if ended:
                node = str((pod.get("spec") or {}).get("nodeName") or "")
                return str(ended.get("message") or ""), node
    return "", ""


def result(message: str, run: str, node: str, now: datetime.datetime) -> api.TuningResult:
    """The tuner's summary (JSON) as a TuningResult; ValueError when it is not one."""
    try:
        summary = json.loads(message)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not the tuner's result: {message[-300:]!r}") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"not the tuner's result: {message[-300:]!r}")
    gpus = ", ".join(summary.get("gpus") or [])
    cpu = summary.get("cpuModel")
    node_type = f"{cpu} ({summary.get('cpus')} CPUs)" if cpu else None
    if gpus:
        node_type = f"{node_type}, {gpus}" if node_type else gpus
    try:
        config = summary.get("config")
        if config is not None:  # the worker's schema checks it, status keeps it as given
            worker_config.ModelConfigSpec.model_validate(config)
        return api.TuningResult(
            key=run,
            completed_at=rollout.stamp(now),
            capacity=summary.get("capacity"),
            p95_ms=summary.get("p95Ms"),
            baseline_capacity=summary.get("baselineCapacity"),
            slo_p95_ms=summary.get("sloP95Ms"),
            config=config,
            node=node or None,
            node_type=node_type,
            trials=summary.get("trials"),
        )
    except pydantic.ValidationError as exc:
        raise ValueError(f"the tuner's result does not fit status: {exc}") from exc


def _dump(entry: api.ProfileTuning) -> Obj:
    dumped: Obj = entry.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def step(
    im: api.InferenceModel,
    previous: Sequence[Mapping[str, Any]] | None,
    jobs: Sequence[Mapping[str, Any]],
    read_pods: ReadPods,
    cfg: settings.Settings,
    now: datetime.datetime,
) -> Step:
    """This reconcile's part of spec.tuning (see the module docstring)."""
    if im.spec.tuning is None:
        return Step()
    before = {str(e.get("tier") or ""): e for e in previous or []}
    by_name = {j["metadata"]["name"]: j for j in jobs}
    out = Step()
    for profile in tuning_render.profiles(im):
        run = tuning_render.key(im, profile, cfg)
        name = tuning_render.job_name(im, profile, run)
        old = before.get(profile.tier)
        kept = (old or {}).get("result")
        where = f"tier {profile.tier}" if profile.tier else "the model"
        if old is None or old.get("key") != run:
            out.jobs.append(tuning_render.job(im, profile, run, cfg))
            entry = api.ProfileTuning(
                tier=profile.tier,
                key=run,
                phase="Running",
                job=name,
                started_at=rollout.stamp(now),
                message=f"measuring {where} with Job {name}",
                result=kept,
            )
            out.events.append(("Normal", "TuningStarted", f"{where}: Job {name}"))
            out.status.append(_dump(entry))
            continue
        entry = api.ProfileTuning.model_validate(old)
        if entry.phase == "Running":
            entry = _follow(im, profile, entry, by_name.get(name), read_pods, cfg, now, out)
        out.status.append(_dump(entry))
    return out


def _follow(
    im: api.InferenceModel,
    profile: tuning_render.Profile,
    entry: api.ProfileTuning,
    job: Mapping[str, Any] | None,
    read_pods: ReadPods,
    cfg: settings.Settings,
    now: datetime.datetime,
    out: Step,
) -> api.ProfileTuning:
    """A running run: its Job re-applied when missing, its end read when it has one."""
    where = f"tier {profile.tier}" if profile.tier else "the model"
    name = entry.job or ""
    if job is None:
        out.jobs.append(tuning_render.job(im, profile, entry.key, cfg))
        return entry
    failed = _condition(job, "Failed")
    if _condition(job, "Complete") is None and failed is None:
        return entry
    message, node = termination(read_pods(name))
    if failed is not None:
        why = message.strip().splitlines()[-1] if message.strip() else ""
        text = f"Job {name} failed ({failed.get('reason')}): {why or failed.get('message')}"
        out.events.append(("Warning", "TuningFailed", f"{where}: {text}"))
        return entry.model_copy(update={"phase": "Failed", "message": text})
    try:
        measured = result(message, entry.key, node, now)
    except ValueError as exc:
        text = f"Job {name} ended without a result: {exc}"
        out.events.append(("Warning", "TuningFailed", f"{where}: {text}"))
        return entry.model_copy(update={"phase": "Failed", "message": text})
    if measured.capacity:
        text = (
            f"{measured.capacity:g} requests/s per replica at p95 {measured.p95_ms:g} ms "
            f"(SLO {measured.slo_p95_ms:g} ms) on {measured.node_type or 'its node'}"
        )
    else:
        text = f"no config met p95 <= {measured.slo_p95_ms:g} ms on {where}"
    out.events.append(("Normal", "Tuned", f"{where}: {text}"))
    return entry.model_copy(update={"phase": "Succeeded", "message": text, "result": measured})
