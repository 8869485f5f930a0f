"""The Deployment and ReplicaSet controllers, as kube-controller-manager runs them.

A Deployment owns one ReplicaSet per pod template (named ``<deployment>-<pod-template-hash>``,
labelled with the hash, annotated with ``deployment.kubernetes.io/revision``); a ReplicaSet
owns its pods. Rolling updates follow the real controller's arithmetic: the new ReplicaSet
grows while the total stays within ``replicas + maxSurge``, old ones shrink (unhealthy pods
first) while at least ``replicas - maxUnavailable`` pods stay available; ``Recreate`` scales
the old ones to zero and waits for their pods to go before the new one grows. Old
ReplicaSets beyond ``revisionHistoryLimit`` are deleted (and with them, through owner
references, whatever they own). Status carries the fields and the ``Available`` and
``Progressing`` conditions the real controller writes, with its reasons and messages, so
``kubectl rollout status`` and the operator read it as they would on a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import hashlib
import json
import logging
import math
import random
from typing import Any

from polyserve_sandbox import woken
from polyserve_sandbox.apiserver import store as apistore

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
#: Kubernetes' alphabet for generated names: no vowels, no look-alike characters.
SAFE = "bcdfghjklmnpqrstvwxz2456789"
#: How often what only time changes is looked at again: a pod that becomes available after
#: ``minReadySeconds``, a rollout that passes its progress deadline.
RESYNC_SECONDS = 1.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str | None) -> datetime.datetime | None:
    if not stamp:
        return None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def safe_encode(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, digit = divmod(number, len(SAFE))
        chars.append(SAFE[digit])
    return "".join(chars)


def template_hash(template: Obj) -> str:
    """A stable hash of a pod template (the ``pod-template-hash`` label)."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return safe_encode(int(hashlib.sha256(text.encode()).hexdigest(), 16), 10)


def _controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _owner_ref(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _condition(obj: Obj, kind: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def pod_ready(pod: Obj) -> bool:
    ready = _condition(pod, "Ready")
    return bool(ready and ready.get("status") == "True")


def pod_available(pod: Obj, min_ready_seconds: int, now: datetime.datetime) -> bool:
    """Ready for at least ``min_ready_seconds`` (the real controller's definition)."""
    ready = _condition(pod, "Ready")
    if not ready or ready.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = _parse(ready.get("lastTransitionTime"))
    return since is not None and (now - since).total_seconds() >= min_ready_seconds


def _active(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return not pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def resolve(value: int | str | None, replicas: int, *, round_up: bool, default: str) -> int:
    """An int-or-percent of ``replicas`` (maxSurge rounds up, maxUnavailable down)."""
    raw = default if value is None else value
    if isinstance(raw, int):
        return raw
    text = str(raw)
    if text.endswith("%"):
        share = int(text[:-1]) * replicas / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(text)


class Controllers(woken.WokenLoop):
    """The Deployment and ReplicaSet controllers over one store."""

    def __init__(self, store: apistore.Store) -> None:
        super().__init__()
        self.store = store
        self._dirty: set[tuple[str, str, str]] = set()
        # What a sync found waiting on the clock (the real controller's AddAfter): synced
        # again every RESYNC_SECONDS. Everything else waits for a change: a periodic sync
        # of every Deployment would cost the whole cluster each second.
        self._timed: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        kinds = [("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"), ("v1", "Pod")]
        self.begin(self.store, kinds, self._changed, self._run(), "sandbox-deployment-controller")

    def _changed(self, event: apistore.Event) -> None:
        obj = event.object
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default")
        kind = obj.get("kind")
        if kind == "Deployment":
            self._dirty.add(("Deployment", namespace, meta["name"]))
        else:
            for ref in meta.get("ownerReferences") or []:
                if ref.get("controller") and ref.get("kind") in ("ReplicaSet", "Deployment"):
                    self._dirty.add((ref["kind"], namespace, ref["name"]))
            if kind == "ReplicaSet":
                self._dirty.add(("ReplicaSet", namespace, meta["name"]))
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timed_at = loop.time() + RESYNC_SECONDS
        # Once at the start: what was stored before the controllers listened.
        for kind in ("ReplicaSet", "Deployment"):
            for obj in self.store.list("apps/v1", kind):
                self._dirty.add((kind, obj["metadata"]["namespace"], obj["metadata"]["name"]))
        self._wake.set()
        while await self.woken(RESYNC_SECONDS):
            if loop.time() >= timed_at:
                self._dirty |= self._timed
                self._timed = set()
                timed_at = loop.time() + RESYNC_SECONDS
            dirty, self._dirty = self._dirty, set()
            # ReplicaSets first: their status is what the Deployments then read.
            for kind, namespace, name in sorted(dirty, key=lambda k: k[0] != "ReplicaSet"):
                try:
                    if kind == "ReplicaSet":
                        self.sync_replica_set(namespace, name)
                    else:
                        self.sync_deployment(namespace, name)
                except apistore.ApiError as exc:
                    if exc.status == 409:
                        self._dirty.add((kind, namespace, name))  # re-read and try again
                    else:
                        logger.info("syncing %s %s/%s: %s", kind, namespace, name, exc)
                except Exception:
                    logger.exception("syncing %s %s/%s failed", kind, namespace, name)
            await asyncio.sleep(0)

    # ReplicaSets ---------------------------------------------------------------------------

    def _pods_of(self, rs: Obj) -> list[Obj]:
        # Through the owner index, never a list of every pod: a sync costs what the
        # ReplicaSet owns, not what the cluster holds.
        uid = rs["metadata"]["uid"]
        selector = (rs.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        return [
            p
            for p in self.store.owned("v1", "Pod", uid)
            if _controller_uid(p) == uid
            and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]

    def sync_replica_set(self, namespace: str, name: str) -> None:
        rs = self.store.try_get("apps/v1", "ReplicaSet", namespace, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        spec = rs.get("spec") or {}
        pods = self._pods_of(rs)
        active = [p for p in pods if _active(p)]
        want = int(spec.get("replicas", 1))
        if len(active) < want:
            for _ in range(want - len(active)):
                self._create_pod(rs)
        elif len(active) > want:
            for pod in sorted(active, key=_deletion_rank)[: len(active) - want]:
                with contextlib.suppress(apistore.ApiError):
                    self.store.delete("v1", "Pod", namespace, pod["metadata"]["name"])
        pods = [p for p in self._pods_of(rs) if _active(p)]
        now = _now()
        min_ready = int(spec.get("minReadySeconds") or 0)
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": sum(1 for p in pods if pod_ready(p)),
            "availableReplicas": sum(1 for p in pods if pod_available(p, min_ready, now)),
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        if min_ready and status["readyReplicas"] != status["availableReplicas"]:
            self._timed.add(("ReplicaSet", namespace, name))
        old = rs.get("status") or {}
        if any(old.get(k) != v for k, v in status.items()):
            self.store.patch(
                "apps/v1",
                "ReplicaSet",
                namespace,
                name,
                {"status": status},
                patch_type="merge",
                subresource="status",
            )

    def _create_pod(self, rs: Obj) -> None:
        template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
        meta = template.get("metadata") or {}
        suffix = "".join(random.choice(SAFE) for _ in range(5))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{rs['metadata']['name']}-{suffix}",
                "namespace": rs["metadata"]["namespace"],
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [_owner_ref(rs)],
            },
            "spec": template.get("spec") or {},
        }
        self.store.create(pod)

    # Deployments ---------------------------------------------------------------------------

    def _replica_sets_of(self, deployment: Obj) -> list[Obj]:
        uid = deployment["metadata"]["uid"]
        return sorted(
            (
                rs
                for rs in self.store.owned("apps/v1", "ReplicaSet", uid)
                if _controller_uid(rs) == uid and not rs["metadata"].get("deletionTimestamp")
            ),
            key=lambda rs: (rs["metadata"].get("creationTimestamp", ""), rs["metadata"]["name"]),
        )

    def _scale(self, rs: Obj, replicas: int, deployment: Obj, surge: int) -> None:
        if (rs.get("spec") or {}).get("replicas") == replicas:
            return
        desired = (deployment.get("spec") or {}).get("replicas", 1)
        self.store.patch(
            "apps/v1",
            "ReplicaSet",
            rs["metadata"]["namespace"],
            rs["metadata"]["name"],
            {
                "metadata": {
                    "annotations": {DESIRED: str(desired), MAX_REPLICAS: str(desired + surge)}
                },
                "spec": {"replicas": replicas},
            },
            patch_type="merge",
        )
        rs.setdefault("spec", {})["replicas"] = replicas

    def _new_replica_set(self, deployment: Obj, rss: list[Obj], surge: int) -> Obj:
        spec = deployment.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        digest = template_hash(template)
        for rs in rss:
            if (rs["metadata"].get("labels") or {}).get(HASH_LABEL) == digest:
                return rs
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
        revisions = [int((r["metadata"].get("annotations") or {}).get(REVISION, "0")) for r in rss]
        desired = int(spec.get("replicas", 1))
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
        name = f"{deployment['metadata']['name']}-{digest}"
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": deployment["metadata"]["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {
                    REVISION: str(max(revisions, default=0) + 1),
                    DESIRED: str(desired),
                    MAX_REPLICAS: str(desired + surge),
                },
                "ownerReferences": [_owner_ref(deployment)],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                "selector": selector,
                "template": template,
            },
        }
        created = self.store.create(rs)
        self._event(deployment, "ScalingReplicaSet", f"Created new replica set {name!r}")
        return created

    def sync_deployment(self, namespace: str, name: str) -> None:
        deployment = self.store.try_get("apps/v1", "Deployment", namespace, name)
        if deployment is None or deployment["metadata"].get("deletionTimestamp"):
            return
        spec = deployment.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        surge = resolve(rolling.get("maxSurge"), replicas, round_up=True, default="25%")
        unavailable = resolve(
            rolling.get("maxUnavailable"), replicas, round_up=False, default="25%"
        )
        if surge == 0 and unavailable == 0:
            unavailable = 1  # as the real controller: a rollout must be able to progress
        rss = self._replica_sets_of(deployment)
        created = not any(
            (r["metadata"].get("labels") or {}).get(HASH_LABEL)
            == template_hash(spec.get("template") or {})
            for r in rss
        )
        if spec.get("paused"):
            self._write_status(deployment, rss, None, unavailable, created=False)
            return
        new = self._new_replica_set(deployment, rss, surge)
        olds = [r for r in rss if r["metadata"]["uid"] != new["metadata"]["uid"]]
        if strategy.get("type") == "Recreate":
            self._recreate(deployment, new, olds, replicas)
        else:
            self._roll(deployment, new, olds, replicas, surge, unavailable)
        self._clean_up_history(deployment, olds)
        self._write_status(deployment, [new, *olds], new, unavailable, created=created)

    def _recreate(self, deployment: Obj, new: Obj, olds: list[Obj], replicas: int) -> None:
        for old in olds:
            self._scale(old, 0, deployment, 0)
        if any(p for old in olds for p in self._pods_of(old)):
            return  # the old pods must be gone before the new ones start
        self._scale(new, replicas, deployment, 0)

    def _roll(
        self,
        deployment: Obj,
        new: Obj,
        olds: list[Obj],
        replicas: int,
        surge: int,
        unavailable: int,
    ) -> None:
        def count(rs: Obj, field: str) -> int:
            return int((rs.get("status") or {}).get(field) or 0)

        def wanted(rs: Obj) -> int:
            return int((rs.get("spec") or {}).get("replicas") or 0)

        everyone = [new, *olds]
        total = sum(wanted(r) for r in everyone)
        if wanted(new) > replicas:
            self._scale(new, replicas, deployment, surge)
        elif wanted(new) < replicas:
            room = replicas + surge - total
            if room > 0:
                self._scale(new, min(replicas, wanted(new) + room), deployment, surge)
        if not olds:
            return
        total = sum(wanted(r) for r in everyone)
        min_available = replicas - unavailable
        new_unavailable = wanted(new) - count(new, "availableReplicas")
        budget = total - min_available - new_unavailable
        if budget <= 0:
            return
        # Unhealthy old pods go first: they serve nobody.
        for old in olds:
            if budget <= 0:
                break
            unhealthy = wanted(old) - count(old, "availableReplicas")
            cut = min(budget, max(unhealthy, 0))
            if cut > 0:
                self._scale(old, wanted(old) - cut, deployment, surge)
                budget -= cut
        available = sum(count(r, "availableReplicas") for r in everyone)
        budget = available - min_available
        for old in olds:
            if budget <= 0:
                break
            cut = min(budget, wanted(old))
            if cut > 0:
                self._scale(old, wanted(old) - cut, deployment, surge)
                self._event(
                    deployment,
                    "ScalingReplicaSet",
                    f"Scaled down replica set {old['metadata']['name']} to {wanted(old)}",
                )
                budget -= cut

    def _clean_up_history(self, deployment: Obj, olds: list[Obj]) -> None:
        limit = int((deployment.get("spec") or {}).get("revisionHistoryLimit", 10))
        idle = [
            r
            for r in olds
            if not (r.get("spec") or {}).get("replicas")
            and not (r.get("status") or {}).get("replicas")
        ]
        for rs in idle[: max(len(idle) - limit, 0)]:
            with contextlib.suppress(apistore.ApiError):
                self.store.delete(
                    "apps/v1", "ReplicaSet", rs["metadata"]["namespace"], rs["metadata"]["name"]
                )

    def _write_status(
        self,
        deployment: Obj,
        rss: list[Obj],
        new: Obj | None,
        unavailable: int,
        *,
        created: bool,
    ) -> None:
        spec = deployment.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        now = _now()
        rss = [
            self.store.try_get(
                "apps/v1", "ReplicaSet", r["metadata"]["namespace"], r["metadata"]["name"]
            )
            or r
            for r in rss
        ]
        if new is not None:
            new = next((r for r in rss if r["metadata"]["uid"] == new["metadata"]["uid"]), new)

        def total(field: str) -> int:
            return sum(int((r.get("status") or {}).get(field) or 0) for r in rss)

        updated = int(((new or {}).get("status") or {}).get("replicas") or 0)
        available = total("availableReplicas")
        old_status = deployment.get("status") or {}
        status: Obj = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": total("replicas"),
            "updatedReplicas": updated,
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(replicas - available, 0),
        }
        counts_changed = any(old_status.get(k) != v for k, v in status.items())
        new_name = (new or {}).get("metadata", {}).get("name", "")
        complete = (
            new is not None
            and updated == replicas
            and available >= replicas
            and status["replicas"] == replicas
        )
        available_cond = (
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
            if available >= replicas - unavailable
            else (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        )
        previous = _condition(deployment, "Progressing")
        deadline = int(spec.get("progressDeadlineSeconds", 600))
        if complete:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{new_name}" has successfully progressed.',
            )
        elif created:
            progressing = ("True", "NewReplicaSetCreated", f'Created new replica set "{new_name}"')
        elif counts_changed or previous is None:
            progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{new_name}" is progressing.')
        else:
            since = _parse((previous or {}).get("lastUpdateTime")) or now
            if previous.get("reason") == "ProgressDeadlineExceeded" or (
                previous.get("reason") != "NewReplicaSetAvailable"
                and (now - since).total_seconds() > deadline
            ):
                progressing = (
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{new_name}" has timed out progressing.',
                )
            else:
                progressing = (previous["status"], previous["reason"], previous.get("message", ""))
        conditions = [
            _next_condition(
                _condition(deployment, "Available"), "Available", available_cond, now, changed=False
            ),
            _next_condition(
                previous, "Progressing", progressing, now, changed=counts_changed or created
            ),
        ]
        status["conditions"] = conditions
        if not complete and progressing[1] != "ProgressDeadlineExceeded":
            meta = deployment["metadata"]
            self._timed.add(("Deployment", meta["namespace"], meta["name"]))
        if any(old_status.get(k) != v for k, v in status.items()):
            self.store.patch(
                "apps/v1",
                "Deployment",
                deployment["metadata"]["namespace"],
                deployment["metadata"]["name"],
                {"status": status},
                patch_type="merge",
                subresource="status",
            )

    def _event(self, obj: Obj, reason: str, message: str) -> None:
        meta = obj["metadata"]
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
                        "apiVersion": obj["apiVersion"],
                        "kind": obj["kind"],
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta.get("uid"),
                    },
                    "reason": reason,
                    "message": message,
                    "type": "Normal",
                    "source": {"component": "deployment-controller"},
                    "reportingComponent": "deployment-controller",
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                }
            )


def _next_condition(
    previous: Obj | None,
    kind: str,
    value: tuple[str, str, str],
    now: datetime.datetime,
    *,
    changed: bool,
) -> Obj:
    status, reason, message = value
    stamp = _stamp(now)
    same = previous is not None and previous.get("status") == status
    same_reason = same and previous is not None and previous.get("reason") == reason
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": stamp
        if (changed or not same_reason)
        else (previous or {}).get("lastUpdateTime", stamp),
        "lastTransitionTime": (previous or {}).get("lastTransitionTime", stamp) if same else stamp,
    }


def _deletion_rank(pod: Obj) -> tuple[int, int, int, str]:
    """Which pods a shrinking ReplicaSet deletes first: unscheduled, then pending, then not
    ready, then the newest (the real controller's order, simplified)."""
    status = pod.get("status") or {}
    scheduled = bool((pod.get("spec") or {}).get("nodeName"))
    running = status.get("phase") == "Running"
    created = pod["metadata"].get("creationTimestamp", "")
    # Newest first: invert the timestamp's order by sorting on its negated characters.
    newest_first = "".join(chr(0x10FFFF - ord(c)) for c in created)
    return (int(scheduled), int(running), int(pod_ready(pod)), newest_first)
