"""The Job controller, as kube-controller-manager runs it for non-indexed Jobs.

A Job owns its pods (``<job>-<5 random characters>``, labelled ``batch.kubernetes.io/job-name``
and ``job-name``, with the Job's uid as ``batch.kubernetes.io/controller-uid`` and
``controller-uid``). It keeps ``parallelism`` pods running until ``completions`` of them have
Succeeded; a Failed pod is replaced while the failures stay within ``backoffLimit`` (pods of
``restartPolicy: OnFailure`` are restarted in place by the kubelet instead, and fail only as
a whole). It fails when the failures pass ``backoffLimit`` (reason BackoffLimitExceeded) or
``activeDeadlineSeconds`` passes (DeadlineExceeded), deleting the pods still running. Status
carries what the real controller writes: ``startTime``, ``active``, ``ready``, ``succeeded``,
``failed``, ``terminating``, ``completionTime``, and the conditions ``SuccessCriteriaMet`` then
``Complete`` on success, ``FailureTarget`` then ``Failed`` on failure, with its reasons and
messages, so ``kubectl wait --for=condition=Complete`` and the operator read it as on a
cluster. Not emulated: indexed completion, pod failure and success policies, suspension, the
exponential delay between retries, and ``ttlSecondsAfterFinished`` (a finished Job stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
import random
from typing import Any

from polyserve_sandbox import deployments, woken
from polyserve_sandbox.apiserver import store as apistore

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

JOB_NAME = "batch.kubernetes.io/job-name"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
#: The legacy spellings, which the real API server still writes next to the new ones.
LEGACY_JOB_NAME = "job-name"
LEGACY_CONTROLLER_UID = "controller-uid"
RESYNC_SECONDS = 1.0

#: (condition type, reason, message) pairs, as the real controller writes them.
SUCCEEDED = (
    ("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
    ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
)
BACKOFF = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
DEADLINE = ("DeadlineExceeded", "Job was active longer than specified deadline")


def finished(job: Obj) -> bool:
    """Whether the Job has its final condition (Complete or Failed)."""
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str | None) -> datetime.datetime | None:
    if not stamp:
        return None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


class JobController(woken.WokenLoop):
    """The Job controller over one store."""

    def __init__(self, store: apistore.Store) -> None:
        super().__init__()
        self.store = store
        self._dirty: set[tuple[str, str]] = set()

    def start(self) -> None:
        kinds = [("batch/v1", "Job"), ("v1", "Pod")]
        self.begin(self.store, kinds, self._changed, self._run(), "sandbox-job-controller")

    def _changed(self, event: apistore.Event) -> None:
        meta = event.object["metadata"]
        namespace = meta.get("namespace", "default")
        if event.object.get("kind") == "Job":
            self._dirty.add((namespace, meta["name"]))
        else:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("controller") and ref.get("kind") == "Job":
                    self._dirty.add((namespace, ref["name"]))
        self._wake.set()

    async def _run(self) -> None:
        while await self.woken(RESYNC_SECONDS):
            if not self._dirty:  # deadlines pass without an event
                for job in self.store.list("batch/v1", "Job"):
                    if not finished(job):
                        self._dirty.add((job["metadata"]["namespace"], job["metadata"]["name"]))
            dirty, self._dirty = self._dirty, set()
            for namespace, name in sorted(dirty):
                try:
                    self.sync(namespace, name)
                except apistore.ApiError as exc:
                    if exc.status == 409:
                        self._dirty.add((namespace, name))
                    else:
                        logger.info("syncing Job %s/%s: %s", namespace, name, exc)
                except Exception:
                    logger.exception("syncing Job %s/%s failed", namespace, name)
            await asyncio.sleep(0)

    def pods_of(self, job: Obj) -> list[Obj]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.store.list("v1", "Pod", job["metadata"]["namespace"])
            if any(
                r.get("controller") and r.get("uid") == uid
                for r in p["metadata"].get("ownerReferences") or []
            )
        ]

    def sync(self, namespace: str, name: str) -> None:
        job = self.store.try_get("batch/v1", "Job", namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp") or finished(job):
            return
        spec = job.get("spec") or {}
        status = dict(job.get("status") or {})
        now = _now()
        started = _parse(status.get("startTime")) or now
        pods = self.pods_of(job)
        succeeded = sum(1 for p in pods if _phase(p) == "Succeeded")
        failed = sum(1 for p in pods if _phase(p) == "Failed")
        active = [
            p
            for p in pods
            if _phase(p) not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        completions = int(spec.get("completions") or 1)
        deadline = spec.get("activeDeadlineSeconds")
        failure: tuple[str, str] | None = None
        if failed > int(spec.get("backoffLimit", 6)):
            failure = BACKOFF
        elif deadline is not None and (now - started).total_seconds() >= int(deadline):
            failure = DEADLINE
        conditions = list(status.get("conditions") or [])
        if failure is not None:
            for pod in active:
                with contextlib.suppress(apistore.ApiError):
                    self.store.delete("v1", "Pod", namespace, pod["metadata"]["name"])
            active = []
            reason, message = failure
            conditions += [
                _condition("FailureTarget", reason, message, now),
                _condition("Failed", reason, message, now),
            ]
            self._event(job, "Warning", reason, message)
        elif succeeded >= completions:
            conditions += [_condition(kind, r, m, now) for kind, r, m in SUCCEEDED]
            self._event(job, "Normal", "Completed", "Job completed")
        else:
            wanted = min(int(spec.get("parallelism", 1)), completions - succeeded) - len(active)
            for _ in range(max(0, wanted)):
                active.append(self._create_pod(job))
        new_status: Obj = {
            "startTime": _stamp(started),
            "active": len(active),
            "ready": sum(1 for p in active if deployments.pod_ready(p)),
            "succeeded": succeeded,
            "failed": failed,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": conditions or None,
        }
        if succeeded >= completions and failure is None:
            new_status["completionTime"] = _stamp(now)
        if any(status.get(k) != v for k, v in new_status.items()):
            self.store.patch(
                "batch/v1",
                "Job",
                namespace,
                name,
                {"status": new_status},
                patch_type="merge",
                subresource="status",
            )

    def _create_pod(self, job: Obj) -> Obj:
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        meta = template.get("metadata") or {}
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        labels = {
            **(meta.get("labels") or {}),
            JOB_NAME: name,
            LEGACY_JOB_NAME: name,
            CONTROLLER_UID: uid,
            LEGACY_CONTROLLER_UID: uid,
        }
        suffix = "".join(random.choice(deployments.SAFE) for _ in range(5))
        pod_name = f"{name}-{suffix}"
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": job["metadata"]["namespace"],
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec") or {},
        }
        created = self.store.create(pod)
        self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {pod_name}")
        return created

    def _event(self, job: Obj, kind: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        stamp = _stamp(_now())
        with contextlib.suppress(apistore.ApiError):
            self.store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {
                        "generateName": f"{meta['name']}.",
                        "namespace": meta["namespace"],
                    },
                    "involvedObject": {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta.get("uid"),
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "source": {"component": "job-controller"},
                    "reportingComponent": "job-controller",
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                }
            )


def _condition(kind: str, reason: str, message: str, now: datetime.datetime) -> Obj:
    stamp = _stamp(now)
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }
