"""The sandbox's scheduler: kube-scheduler's filters and its words for a pod that fits nowhere.

A pending pod is bound to a node that passes, in kube-scheduler's order, the filters that
matter here: taints and tolerations (NoSchedule, NoExecute), the node selector and required
node affinity, the persistent volume claims the sandbox knows, and requests against
allocatable (pods count too). Among the nodes that fit, the least requested wins. A pod that
fits nowhere stays Pending with ``PodScheduled=False``, reason ``Unschedulable``, and the
message kube-scheduler would write (``0/2 nodes are available: 1 Insufficient cpu, 1
node(s) didn't match Pod's node affinity/selector. preemption: ...``), plus a
FailedScheduling event, and is tried again whenever pods or nodes change. No preemption,
no pod (anti-)affinity, no topology spread: say so where it matters.
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from polyserve_sandbox import quantities, woken
from polyserve_sandbox.apiserver import store as apistore

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

RETRY_SECONDS = 5.0
TERMINAL = ("Succeeded", "Failed")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_requests(pod: Obj) -> dict[str, int]:
    """What a pod asks of a node: the larger of its containers' sum and its largest init
    container, per resource; a limit without a request counts as the request."""

    def of(container: Obj) -> dict[str, int]:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: quantities.amount(name, value) for name, value in asked.items()}

    spec = pod.get("spec") or {}
    total: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        total.update(of(container))
    for init in spec.get("initContainers") or []:
        for name, value in of(init).items():
            total[name] = max(total[name], value)
    return dict(total)


def _tolerates(tolerations: Iterable[Obj], taint: Obj) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if not t.get("key"):
            if t.get("operator") == "Exists":
                return True
            continue
        if t["key"] != taint.get("key"):
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _untolerated(pod: Obj, node: Obj) -> Obj | None:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            tolerations, taint
        ):
            return dict(taint)
    return None


def _expression_holds(expression: Obj, labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator")
    values = [str(v) for v in expression.get("values") or []]
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if operator == "Gt" else have < want
    return False


def _matches_node(pod: Obj, node: Obj) -> bool:
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    for term in terms:
        expressions = term.get("matchExpressions") or []
        by_field = term.get("matchFields") or []
        if all(_expression_holds(e, labels) for e in expressions) and all(
            _expression_holds(e, fields) for e in by_field
        ):
            return True
    return False


class Scheduler(woken.WokenLoop):
    """Binds pending pods to nodes (see the module docstring)."""

    def __init__(
        self, store: apistore.Store, claim_exists: Callable[[str, str], bool] | None = None
    ) -> None:
        super().__init__()
        self.store = store
        self.claim_exists = claim_exists or (lambda namespace, claim: True)
        self._reported: dict[str, str] = {}  # pod uid -> the last Unschedulable message
        # What the nodes hold and which pods wait, kept from the store's changes once
        # started (recounted from a list before each pass when not): a pass reads only the
        # pending pods, never every pod of the cluster.
        self._following = False
        self._placed: dict[str, tuple[str, dict[str, int]]] = {}  # uid -> (node, requests)
        self._used: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._pending: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name)

    def start(self) -> None:
        kinds = [("v1", "Pod"), ("v1", "Node")]
        self.begin(self.store, kinds, self._changed, self._run(), "sandbox-scheduler")
        self._following = True
        self._recount()
        self._wake.set()

    def _changed(self, event: apistore.Event) -> None:
        if event.object.get("kind") == "Pod":
            self._note(event.object, gone=event.type == "DELETED")
        self._wake.set()

    async def _run(self) -> None:
        while await self.woken(RETRY_SECONDS):
            try:
                self.schedule_pending()
            except Exception:
                logger.exception("scheduling failed; retrying")

    def _recount(self) -> None:
        self._placed.clear()
        self._used.clear()
        self._pending.clear()
        for pod in self.store.list("v1", "Pod"):
            self._note(pod, gone=False)

    def _note(self, pod: Obj, *, gone: bool) -> None:
        """Count a pod on its node while it holds its share (bound, not finished), and keep
        it among the pending while it waits for a node."""
        meta = pod["metadata"]
        uid = str(meta.get("uid", ""))
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        holds = not gone and bool(node) and phase not in TERMINAL
        if holds and uid not in self._placed:
            wants = pod_requests(pod)
            self._placed[uid] = (str(node), wants)
            self._used[str(node)].update(wants)
            self._used[str(node)]["pods"] += 1
        elif not holds and uid in self._placed:
            was, wants = self._placed.pop(uid)
            self._used[was].subtract(wants)
            self._used[was]["pods"] -= 1
        if not gone and not node and not meta.get("deletionTimestamp"):
            self._pending[uid] = (meta.get("namespace", "default"), meta["name"])
        else:
            self._pending.pop(uid, None)
        if gone:
            self._reported.pop(uid, None)

    def schedule_pending(self) -> None:
        """One pass: try to bind every pending, unbound pod."""
        if not self._following:
            self._recount()
        if not self._pending:
            return
        nodes = self.store.list("v1", "Node")
        for uid, (namespace, name) in sorted(self._pending.items(), key=lambda item: item[1]):
            pod = self.store.try_get("v1", "Pod", namespace, name)
            if pod is None or str(pod["metadata"].get("uid")) != uid:
                continue
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            node, why = self._fit(pod, nodes, self._used)
            if node is None:
                self._unschedulable(pod, why)
                continue
            node_name = node["metadata"]["name"]
            if self._bind(pod, node_name):
                # Counted at once (a no-op when the store's change already counted it), so
                # the next pod of this pass sees the node's new load.
                self._note({**pod, "spec": {**spec, "nodeName": node_name}}, gone=False)

    def _fit(
        self, pod: Obj, nodes: list[Obj], used: dict[str, Counter[str]]
    ) -> tuple[Obj | None, str]:
        reasons: Counter[str] = Counter()
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in (pod.get("spec") or {}).get("volumes") or []
            if v.get("persistentVolumeClaim")
        ]
        namespace = pod["metadata"].get("namespace", "default")
        missing = [c for c in claims if not self.claim_exists(namespace, c)]
        if missing:
            return None, self._message(
                len(nodes),
                Counter({f'persistentvolumeclaim "{missing[0]}" not found': 1}),
                pvc=True,
            )
        wants = pod_requests(pod)
        fits: list[tuple[float, Obj]] = []
        for node in nodes:
            taint = _untolerated(pod, node)
            if taint is not None:
                value = f": {taint['value']}" if taint.get("value") else ": "
                reasons[f"node(s) had untolerated taint {{{taint.get('key')}{value}}}"] += 1
                continue
            if not _matches_node(pod, node):
                reasons["node(s) didn't match Pod's node affinity/selector"] += 1
                continue
            allocatable = {
                name: quantities.amount(name, value)
                for name, value in ((node.get("status") or {}).get("allocatable") or {}).items()
            }
            have = used[node["metadata"]["name"]]
            short = [
                name
                for name, amount in sorted(wants.items())
                if amount > 0 and have[name] + amount > allocatable.get(name, 0)
            ]
            if have["pods"] + 1 > allocatable.get("pods", 110):
                reasons["Too many pods"] += 1
                continue
            if short:
                for name in short:
                    reasons[f"Insufficient {name}"] += 1
                continue
            load = (
                max(
                    (have[n] + wants.get(n, 0)) / allocatable[n]
                    for n in ("cpu", "memory")
                    if allocatable.get(n)
                )
                if any(allocatable.get(n) for n in ("cpu", "memory"))
                else 0.0
            )
            fits.append((load, node))
        if fits:
            return min(fits, key=lambda f: f[0])[1], ""
        return None, self._message(len(nodes), reasons)

    @staticmethod
    def _message(total: int, reasons: Counter[str], pvc: bool = False) -> str:
        if pvc:
            (reason,) = reasons
            return (
                f"0/{total} nodes are available: {reason}. preemption: 0/{total} nodes are "
                f"available: {total} Preemption is not helpful for scheduling."
            )
        if total == 0:
            return "no nodes available to schedule pods"
        parts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        return (
            f"0/{total} nodes are available: {parts}. preemption: 0/{total} nodes are "
            f"available: {total} Preemption is not helpful for scheduling."
        )

    def _bind(self, pod: Obj, node_name: str) -> bool:
        meta = pod["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        try:
            self.store.patch(
                "v1", "Pod", namespace, name, {"spec": {"nodeName": node_name}}, patch_type="merge"
            )
            conditions = [
                c
                for c in (pod.get("status") or {}).get("conditions") or []
                if c.get("type") != "PodScheduled"
            ]
            conditions.append(
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
            )
            self.store.patch(
                "v1",
                "Pod",
                namespace,
                name,
                {"status": {"conditions": conditions}},
                patch_type="merge",
                subresource="status",
            )
        except apistore.ApiError as exc:
            logger.info("binding %s/%s to %s failed: %s", namespace, name, node_name, exc)
            return False
        self._reported.pop(meta.get("uid", ""), None)
        self._event(
            pod, "Normal", "Scheduled", f"Successfully assigned {namespace}/{name} to {node_name}"
        )
        return True

    def _unschedulable(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        if self._reported.get(meta.get("uid", "")) == message:
            return
        self._reported[meta.get("uid", "")] = message
        namespace, name = meta.get("namespace", "default"), meta["name"]
        status: Obj = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastTransitionTime": _now(),
                }
            ],
        }
        try:
            self.store.patch(
                "v1",
                "Pod",
                namespace,
                name,
                {"status": status},
                patch_type="merge",
                subresource="status",
            )
        except apistore.ApiError as exc:
            logger.info("cannot mark %s/%s unschedulable: %s", namespace, name, exc)
            return
        self._event(pod, "Warning", "FailedScheduling", message)

    def _event(self, pod: Obj, kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        namespace = meta.get("namespace", "default")
        stamp = _now()
        try:
            self.store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "namespace": namespace,
                        "uid": meta.get("uid"),
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "source": {"component": "default-scheduler"},
                    "reportingComponent": "default-scheduler",
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                }
            )
        except apistore.ApiError as exc:
            logger.debug("event not recorded: %s", exc)
