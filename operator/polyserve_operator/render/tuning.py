"""spec.tuning -> one tuning Job per hardware profile (each tier's, or the model's one).

A tuning Job runs ``polyserve-worker tune`` in the worker image of the profile's pool, on that
pool, with the pod the profile's worker Deployment would get (its fetch init containers,
volumes, placement, resources and security, rendered by ``workloads.deployment`` and kept):
only the serving container becomes the tuner, and the config comes as an argument instead of
the revision's ConfigMap (a tier that does not serve has none). Its command line comes from
the tuner's own ``flags.args``. The result is the container's termination message (at most
4096 bytes: the tuner's summary fits), which needs no extra permission in the pod: the
operator reads it from the finished pod. The pods carry labels of their own, never the
workload's, so no Service selects them and the operator's pod watch does not count them.

Each run is keyed by what it measures (``key``): the artifact, the model format, the hardware
profile, the worker image and the tuning spec. A new key is a new Job; the config in the spec
is not part of it, so committing a recommendation does not start another run. Pure.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from polyserve_operator import api, render, rollout, settings
from polyserve_operator.render import workloads
from polyserve_worker.tuning import flags

Obj = dict[str, Any]

KEY_LABEL = f"{api.GROUP}/tuning-key"
TIER_LABEL = f"{api.GROUP}/tuning-tier"
#: The label of a tuning Job's pods (the workload's labels are left off on purpose).
POD_LABEL = f"{api.GROUP}/tuning"
#: The label the Job controller puts on its pods.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTAINER = "tune"
OUTPUT = "/tmp/tuning"
#: What a Job gets beyond its budget: scheduling, pulling, fetching the artifact, loading.
START_SECONDS = 600
#: How long a finished Job (and its pod's log, the report) is kept.
KEEP_SECONDS = 86400


@dataclass(frozen=True)
class Profile:
    """One hardware profile to tune on: a tier's, or (tier "") the model's spec.hardware."""

    tier: str
    hardware: api.Hardware
    workload: workloads.Workload


def _on(im: api.InferenceModel, tier: api.Tier | None) -> api.InferenceModel:
    """The model as one replica on a profile: no rollout, no autoscaler."""
    spec = im.spec
    update: dict[str, Any] = {"replicas": 1, "rollout": None, "scaling": None, "tiers": None}
    if tier is not None:
        update.update(hardware=tier.hardware, resources=tier.resources or spec.resources)
    return im.model_copy(update={"spec": spec.model_copy(update=update)})


def profiles(im: api.InferenceModel) -> list[Profile]:
    if not im.spec.tiers:
        return [Profile("", im.spec.hardware, render.model_workload(_on(im, None)))]
    return [Profile(t.name, t.hardware, render.model_workload(_on(im, t))) for t in im.spec.tiers]


def key(im: api.InferenceModel, profile: Profile, cfg: settings.Settings) -> str:
    """What a run measures, hashed: a new value is a new run."""
    assert im.spec.tuning is not None
    payload = {
        "image": workloads.image(profile.workload, cfg),
        "artifact": im.spec.artifact.model_dump(mode="json"),
        "format": im.spec.model_format.name,
        "hardware": profile.hardware.model_dump(mode="json"),
        "backend": profile.workload.backend,
        "tuning": im.spec.tuning.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def job_name(im: api.InferenceModel, profile: Profile, run: str) -> str:
    return workloads.dns_label(f"{im.metadata.name}-tune", f"{profile.tier or 'model'}-{run[:6]}")


def hardware_flag(profile: Profile) -> str:
    """The profile as the tuner's --hardware: the pool, the backend the operator chose for it
    (``auto`` resolved) and the precision, all fixed: the tier is the user's choice, the
    tuner searches the config within it."""
    hw = profile.hardware
    return f"pool={hw.pool},backend={profile.workload.backend},precision={hw.precision}"


def job(im: api.InferenceModel, profile: Profile, run: str, cfg: settings.Settings) -> Obj:
    """The tuning Job of one profile (see the module docstring)."""
    assert im.spec.tuning is not None
    w = profile.workload
    name = job_name(im, profile, run)
    pod = copy.deepcopy(workloads.deployment(w, cfg)["spec"]["template"]["spec"])
    # The config comes on the command line: no ConfigMap, no init container copying it.
    pod["initContainers"] = [
        c
        for c in pod.get("initContainers") or []
        if not any(m["name"] == "config" for m in c.get("volumeMounts") or [])
    ]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "config"]
    (worker,) = pod["containers"]
    served = w.models[0]
    tuning = im.spec.tuning
    pod["containers"] = [
        {
            "name": CONTAINER,
            "image": worker["image"],
            "imagePullPolicy": worker["imagePullPolicy"],
            "command": ["polyserve-worker"],
            "args": flags.args(
                model_repository=workloads.REPOSITORY,
                model=served.name,
                slo_p95_ms=tuning.slo_p95_ms,
                budget=f"{int(rollout.seconds(tuning.budget))}s",
                output=OUTPUT,
                protocol=tuning.protocol,
                hardware_=hardware_flag(profile),
                config_pbtxt=served.pbtxt,
                result_file=flags.TERMINATION_LOG,
            ),
            "resources": worker["resources"],
            "securityContext": worker["securityContext"],
            "terminationMessagePath": flags.TERMINATION_LOG,
            # A failed run's last log line (what went wrong) becomes the message instead.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": worker["volumeMounts"],
        }
    ]
    pod["restartPolicy"] = "Never"
    meta = workloads.metadata(w, name)
    meta["labels"].update(
        {
            "app.kubernetes.io/name": "polyserve-tune",
            "app.kubernetes.io/component": "tuning",
            KEY_LABEL: run,
            TIER_LABEL: profile.tier or "model",
        }
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": int(rollout.seconds(tuning.budget)) + START_SECONDS,
            "ttlSecondsAfterFinished": KEEP_SECONDS,
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": "polyserve-tune",
                        POD_LABEL: im.metadata.name,
                    }
                },
                "spec": pod,
            },
        },
    }
