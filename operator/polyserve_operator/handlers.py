"""kopf handlers: validate, render, apply, observe, write status. Nothing else lives here.

Reconciliation is level-based: creation, every spec change, operator restarts (resume) and
a periodic timer all run the same function, which renders the desired objects from the spec,
compares them with what exists, applies what is missing or drifted with server-side apply,
and writes ``status``. What exists comes from kopf's indexes of the owned objects (watched,
selected on the server by our ``managed-by`` label), so the timer costs no API reads and a
deleted Service or ConfigMap is noticed and put back at the next tick. Running it twice
changes nothing, so a restarted operator converges without duplicates. Handlers are
registered on an explicit registry built from settings, so importing this module registers
nothing.

At rest the timer costs neither API requests nor rendering: a tick whose inputs (the
resource's resourceVersion and those of everything it owns, ``observe.fingerprint``) are
those of the last tick that found nothing to do is skipped, unless the result follows the
clock (a canary step, a tier's load, an autoscaler's status) or the resync count is reached.
Each resource's timer starts at its own offset within the interval (``spread``), so
resources created together do not tick together.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kopf
import pydantic

from polyserve_operator import (
    admission,
    api,
    canarying,
    conditions,
    k8s,
    observe,
    render,
    settings,
    telemetry,
    tiering,
    tuning,
    validating,
)
from polyserve_operator.render import canaries, placement, scaling, workloads
from polyserve_operator.render import tuning as tuning_render

logger = logging.getLogger(__name__)

MODELS = (api.GROUP, api.VERSION, "inferencemodels")
ENSEMBLES = (api.GROUP, api.VERSION, "inferenceensembles")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _invalid(
    exc: pydantic.ValidationError,
) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )


class World:
    """What a handler sees: kopf's indexes of our resources and of the objects they own."""

    def __init__(self, indexes: Mapping[str, observe.Index]) -> None:
        self.indexes = indexes

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> World:
        return cls({kind: kwargs[_index_name(kind)] for kind in _INDEXED})

    def children(self, w: workloads.Workload) -> observe.Children:
        return observe.children(self.indexes, w.owner.namespace, w.name)

    @property
    def models(self) -> observe.Index:
        return self.indexes["InferenceModel"]

    @property
    def ensembles(self) -> observe.Index:
        return self.indexes["InferenceEnsemble"]


#: A periodic observation whose inputs have not changed is skipped this many times in a
#: row, then runs in full anyway: a resync (what an informer's resync period is to
#: client-go), in case an input was missed (5 minutes at the default 15 s interval).
RESYNC_AFTER = 20


class Reconciler:
    """The reconciliation of both kinds, over one API client and one set of settings."""

    def __init__(self, cfg: settings.Settings, client: k8s.Client) -> None:
        self.cfg = cfg
        self.client = client
        self.canaries = canarying.Canaries(cfg)
        self.tiers = tiering.Tiers(cfg)
        # (kind, namespace, name) -> (the fingerprint of an observation that found nothing
        # to do, how many observations were skipped since). Handlers run in kopf's threads.
        self._settled: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._lock = threading.Lock()

    def refresh(self, kind: str, body: kopf.Body, patch: kopf.Patch, world: World) -> bool:
        """A periodic observation (the timer; resuming after a restart): a reconcile that
        applies only what is missing or drifted, skipped when nothing it reads changed since
        the last one that found nothing to do. Returns whether it ran."""
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace") or "", meta.get("name") or "")
        mark = observe.fingerprint(world.indexes, body, _related(kind, body))
        steady = _steady(body)
        with self._lock:
            seen = self._settled.get(key)
            if steady and seen is not None and seen[0] == mark and seen[1] < RESYNC_AFTER:
                self._settled[key] = (mark, seen[1] + 1)
                return False
            self._settled.pop(key, None)
        try:
            with _counted(kind, body, patch):
                if kind == "InferenceModel":
                    self.model(body, patch, world, force=False)
                else:
                    self.ensemble(body, patch, world, force=False)
        finally:
            status = patch.pop("status", None)
            self._write_status(kind, key[1], key[2], status)
        if steady and not status:  # nothing written: the same inputs will find nothing again
            with self._lock:
                self._settled[key] = (mark, 0)
        return True

    def _write_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any] | None
    ) -> None:
        """Write a periodic observation's status ourselves (a merge patch of the ``status``
        subresource, tried again by the client when refused for a passing reason), leaving
        kopf's patch empty: kopf ends a timer for good when the timer's own patch fails, and
        the resource would never be observed again. What still fails is retried by kopf as
        the handler's temporary error, and the status recomputed then."""
        if not status:
            return
        try:
            self.client.patch(
                api.API_VERSION, kind, namespace, name, {"status": status}, subresource="status"
            )
        except k8s.ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise kopf.TemporaryError(f"writing the status failed: {exc}", delay=5) from exc

    def _fail(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        problem: conditions.Problem,
        *,
        desired: int,
    ) -> None:
        status = conditions.compute(
            generation=body.meta.get("generation"),
            desired_replicas=desired,
            observation=None,
            previous=dict(body.get("status") or {}),
            now=_now(),
            failure=problem,
        )
        patch.status.update(status)

    def _report(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        w: workloads.Workload,
        desired: int,
        observation: conditions.Observation,
        *,
        serving: workloads.Workload | None = None,
    ) -> None:
        previous = dict(body.get("status") or {})
        shown = serving or w
        status = conditions.compute(
            generation=body.meta.get("generation"),
            desired_replicas=desired,
            observation=observation,
            previous=previous,
            now=_now(),
            placement_hint=placement.describe(w.hardware, self.cfg),
        )
        rev = workloads.revision(w, self.cfg)
        status.update(
            revision=rev,
            pool=shown.hardware.pool,
            backend=shown.backend,
            endpoints=workloads.endpoints(w).model_dump(exclude_none=True),
        )
        if w.scaling is not None:
            status["autoscaler"] = self._autoscaler(w)
            was = (previous.get("autoscaler") or {}).get("active")
            if status["autoscaler"].get("active") is False and was is not False:
                kopf.warn(
                    body,
                    reason="AutoscalerInactive",
                    message=status["autoscaler"].get("message") or "the autoscaler cannot scale",
                )
        if previous.get("revision") != rev:
            kopf.info(body, reason="Rendered", message=f"applied revision {rev}")
        old_ready = {c.get("type"): c.get("status") for c in previous.get("conditions") or []}
        new = {c["type"]: c for c in status["conditions"]}
        degraded = new["Degraded"]["status"] == "True"
        if old_ready.get("Ready") != new["Ready"]["status"]:
            if new["Ready"]["status"] == "True":
                kopf.info(body, reason="Ready", message=new["Ready"]["message"])
            elif degraded:
                kopf.warn(
                    body,
                    reason=new["Ready"]["reason"],
                    message=new["Ready"]["message"] or "not ready",
                )
            # Not ready and nothing wrong: a rollout in progress, which is no warning.
        elif degraded and old_ready.get("Degraded") != "True":
            kopf.warn(body, reason=new["Degraded"]["reason"], message=new["Degraded"]["message"])
        # Only what changed: an unchanged status costs no API call and wakes no watcher.
        for key, value in status.items():
            if previous.get(key) != value:
                patch.status[key] = replacing(previous.get(key), value)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop what is kept in memory for a deleted resource."""
        with self._lock:
            self._settled.pop((kind, namespace, name), None)
        self.canaries.forget(namespace, name)  # names are unique across the two kinds
        if kind == "InferenceModel":
            self.tiers.forget(namespace, name)
        telemetry.forget(kind, namespace, name)

    def _drop_autoscalers(self, w: workloads.Workload, desired: list[workloads.Obj]) -> None:
        """After a spec change: delete an autoscaler the spec no longer asks for (scaling
        removed, or its engine changed), so it never fights the replicas the operator sets.
        Autoscalers are not watched, so this is a delete by name (gone already: no error)."""
        rendered = {o["kind"] for o in desired}
        for api_version, kind in scaling.ENGINES.values():
            if kind in rendered:
                continue
            try:
                if self.client.delete(api_version, kind, w.owner.namespace, w.name):
                    logger.info("deleted %s %s/%s", kind, w.owner.namespace, w.name)
            except k8s.ApiError as exc:
                if exc.status not in (403, 404, 405):  # no KEDA CRD, or not granted: none exists
                    raise kopf.TemporaryError(f"deleting the old {kind}: {exc}", delay=10) from exc

    def _autoscaler(self, w: workloads.Workload) -> dict[str, Any]:
        """The autoscaler's own status (one read per refresh, for models with spec.scaling)."""
        assert w.scaling is not None
        api_version, kind = scaling.ENGINES[w.scaling.engine]
        try:
            obj = self.client.get(api_version, kind, w.owner.namespace, w.name)
        except k8s.ApiError as exc:
            return {"kind": kind, "name": w.name, "message": f"cannot read it: {exc}"}
        if obj is None:
            return {"kind": kind, "name": w.name, "message": "not created yet"}
        return observe.autoscaler(obj)

    def _converge(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        w: workloads.Workload,
        world: World,
        *,
        force: bool,
    ) -> None:
        """Apply what is missing or drifted (everything when ``force``: a spec change), clean
        up what the revision no longer needs, then report what the world shows."""
        children = world.children(w)
        if canaries.canary_of(w) is not None:
            self._converge_canary(body, patch, w, children, force=force)
            return
        desired = _hand_off(render.objects(w, self.cfg), children)
        stale = [] if force else [o for o in desired if _drifted(o, children)]
        self._apply(body, patch, w, desired if force else stale)
        self._clean_up(w, desired, children)
        if force and _reported(body):
            self._drop_autoscalers(w, desired)
        self._report(body, patch, w, w.replicas, children.observation())

    def _converge_canary(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        w: workloads.Workload,
        children: observe.Children,
        *,
        force: bool,
        stable_size: int | None = None,
        warm: Mapping[str, int] | None = None,
        serving: workloads.Workload | None = None,
    ) -> None:
        """One step of a canary rollout (see ``canarying``): apply what the plan runs, scale
        the older stable revision, delete what it no longer needs, report (the pool and
        backend of ``serving``, when given, instead of ``w``'s)."""
        step = self.canaries.step(
            w, dict(body), children, _now(), stable_size=stable_size, warm=warm
        )
        desired = _hand_off(step.desired, children)
        stale = desired if force else [o for o in desired if _drifted(o, children)]
        self._apply(body, patch, w, stale)
        try:
            for name, replicas in step.scale.items():
                current = children.present("Deployment", name) or {}
                if (current.get("spec") or {}).get("replicas") != replicas:
                    self.client.patch(
                        "apps/v1",
                        "Deployment",
                        w.owner.namespace,
                        name,
                        {"spec": {"replicas": replicas}},
                    )
            for obj in step.doomed:
                self.client.delete(
                    obj["apiVersion"], obj["kind"], w.owner.namespace, obj["metadata"]["name"]
                )
        except k8s.ApiError as exc:
            raise kopf.TemporaryError(f"scaling the rollout failed: {exc}", delay=5) from exc
        self._clean_up(w, desired, children)
        if force and _reported(body):
            self._drop_autoscalers(w, desired)
        for kind, reason, message in step.plan.events:
            (kopf.info if kind == "Normal" else kopf.warn)(body, reason=reason, message=message)
        previous = (body.get("status") or {}).get("rollout")
        if previous != step.plan.status:
            patch.status["rollout"] = replacing(previous, step.plan.status)
        observation = children.observation(step.stable_deployment)
        self._report(body, patch, w, step.plan.stable_replicas, observation, serving=serving)

    def _apply(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        w: workloads.Workload,
        objects: list[workloads.Obj],
    ) -> None:
        try:
            for obj in objects:
                self.client.apply(obj)
        except k8s.ApiError as exc:
            telemetry.failed(w.owner.kind, "ApplyFailed")
            problem = conditions.Problem("ApplyFailed", f"applying the workload failed: {exc}")
            self._fail(body, patch, problem, desired=w.replicas)
            kopf.warn(body, reason="ApplyFailed", message=str(exc))
            if exc.retryable:
                raise kopf.TemporaryError(str(exc), delay=10) from exc
            raise kopf.PermanentError(str(exc)) from exc

    def _clean_up(
        self, w: workloads.Workload, desired: list[workloads.Obj], children: observe.Children
    ) -> None:
        """Delete owned objects the revision no longer wants: a PodDisruptionBudget after a
        scale-down to one replica, and ConfigMaps of revisions that never got a ReplicaSet
        (those that did go with their ReplicaSet)."""
        wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
        doomed: list[workloads.Obj] = []
        handed: list[tuple[workloads.Obj, workloads.Obj]] = []
        budget = children.disruption_budget
        if budget is not None and ("PodDisruptionBudget", w.name) not in wanted:
            doomed.append(budget)
        for config_map in children.config_maps:
            if ("ConfigMap", config_map["metadata"]["name"]) in wanted:
                continue
            revision = (config_map["metadata"].get("labels") or {}).get(workloads.REVISION_LABEL)
            replica_set = _replica_set_of(children.replica_sets, revision or "")
            if replica_set is None:
                if not any(kind == "ReplicaSet" for kind, _ in _owners(config_map)):
                    doomed.append(config_map)  # a revision no pod ever ran
            elif _owners(config_map) != [("ReplicaSet", replica_set["metadata"]["uid"])]:
                handed.append((config_map, replica_set))  # an older revision still running
        try:
            for config_map, replica_set in handed:
                self.client.patch(
                    "v1",
                    "ConfigMap",
                    w.owner.namespace,
                    config_map["metadata"]["name"],
                    {"metadata": {"ownerReferences": [_owner_reference(replica_set)]}},
                )
            for obj in doomed:
                self.client.delete(
                    obj["apiVersion"], obj["kind"], w.owner.namespace, obj["metadata"]["name"]
                )
        except k8s.ApiError as exc:
            raise kopf.TemporaryError(f"cleaning up failed: {exc}", delay=10) from exc

    def model(self, body: kopf.Body, patch: kopf.Patch, world: World, *, force: bool) -> None:
        """Reconcile one InferenceModel."""
        try:
            im = api.InferenceModel.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            self._invalid_spec(body, patch, _invalid(exc))
            return
        problems = validating.model(im)
        if problems:
            self._invalid_spec(body, patch, "; ".join(problems))
            return
        if im.spec.tuning is not None:
            self._tune(body, patch, im, world)
        if im.spec.tiers:
            self._converge_tiered(body, patch, im, world, force=force)
            return
        self._converge(body, patch, render.model_workload(im), world, force=force)

    def _tune(
        self, body: kopf.Body, patch: kopf.Patch, im: api.InferenceModel, world: World
    ) -> None:
        """spec.tuning (``tuning``): apply the tuning Jobs it wants, record their results."""
        namespace = im.metadata.namespace
        children = observe.children(world.indexes, namespace, im.metadata.name)

        def pods_of(job: str) -> list[workloads.Obj]:
            return self.client.list("v1", "Pod", namespace, {tuning_render.JOB_NAME_LABEL: job})

        previous = (body.get("status") or {}).get("tuning")
        try:
            step = tuning.step(im, previous, children.jobs, pods_of, self.cfg, _now())
            for job in step.jobs:
                self.client.apply(job)
        except k8s.ApiError as exc:
            raise kopf.TemporaryError(f"tuning: {exc}", delay=10) from exc
        for kind, reason, message in step.events:
            (kopf.info if kind == "Normal" else kopf.warn)(body, reason=reason, message=message)
        if previous != step.status:
            patch.status["tuning"] = step.status

    def _converge_tiered(
        self,
        body: kopf.Body,
        patch: kopf.Patch,
        im: api.InferenceModel,
        world: World,
        *,
        force: bool,
    ) -> None:
        """A tiered model: decide its tier from its load (``tiering``), then run that tier,
        moving to it by canary when it changed."""
        children = observe.children(world.indexes, im.metadata.namespace, im.metadata.name)
        move = self.tiers.plan(im, dict(body), children, _now())
        for kind, reason, message in move.decision.events:
            (kopf.info if kind == "Normal" else kopf.warn)(body, reason=reason, message=message)
        before = (body.get("status") or {}).get("tier")
        if before != move.decision.status:
            patch.status["tier"] = replacing(before, move.decision.status)
        self._converge_canary(
            body,
            patch,
            move.workload,
            children,
            force=force,
            stable_size=move.stable_size,
            warm=move.warm,
            serving=move.serving,
        )

    def ensemble(self, body: kopf.Body, patch: kopf.Patch, world: World, *, force: bool) -> None:
        """Reconcile one InferenceEnsemble (members are re-read every time)."""
        try:
            ie = api.InferenceEnsemble.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            self._invalid_spec(body, patch, _invalid(exc))
            return
        members, problems = self._ensemble_problems(ie, world)
        if problems:
            # A missing member may be created later: keep retrying, but say why in status.
            self._invalid_spec(body, patch, "; ".join(problems), permanent=False)
            return
        present = {k: v for k, v in members.items() if v is not None}
        self._converge(body, patch, render.ensemble_workload(ie, present), world, force=force)

    def _ensemble_problems(
        self, ie: api.InferenceEnsemble, world: World, *, admitting: bool = False
    ) -> tuple[dict[str, api.InferenceModel | None], list[str]]:
        """The ensemble's members and what is wrong with it. Admission reads what the index
        does not hold yet (a member created a moment ago); reconciles wait for the index."""
        namespace, name = ie.metadata.namespace, ie.metadata.name

        def read(model: str) -> dict[str, Any] | None:
            try:
                return self.client.get(api.API_VERSION, "InferenceModel", namespace, model)
            except k8s.ApiError as exc:
                raise kopf.AdmissionError(f"cannot read the members: {exc}", code=503) from exc

        refs = {s.model_ref for s in ie.spec.steps}
        members = observe.members(world.models, namespace, refs, read if admitting else None)
        problems = validating.ensemble(ie, members)
        if observe.exists(world.models, namespace, name) or (admitting and read(name)):
            # Both would render children of the same name; the InferenceModel keeps them.
            problems.append(validating.name_clash("InferenceEnsemble", name, "InferenceModel"))
        return members, problems

    def _invalid_spec(
        self, body: kopf.Body, patch: kopf.Patch, message: str, *, permanent: bool = True
    ) -> None:
        reason = "InvalidSpec"
        problem = conditions.Problem(reason, message)
        previous = (body.get("status") or {}).get("lastFailure") or {}
        self._fail(body, patch, problem, desired=int(body.spec.get("replicas", 1) or 0))
        if previous.get("message") != message:
            kopf.warn(body, reason=reason, message=message)
        logger.info("%s/%s: invalid spec: %s", body.meta.namespace, body.meta.name, message)

    def admit_model(self, body: kopf.Body, world: World) -> None:
        """Webhook: refuse what the schema cannot."""
        try:
            im = api.InferenceModel.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            raise kopf.AdmissionError(_invalid(exc), code=422) from exc
        problems = validating.model(im)
        namespace, name = im.metadata.namespace, im.metadata.name
        try:
            clash = observe.exists(world.ensembles, namespace, name) or bool(
                self.client.get(api.API_VERSION, "InferenceEnsemble", namespace, name)
            )
        except k8s.ApiError as exc:
            raise kopf.AdmissionError(f"cannot read the ensembles: {exc}", code=503) from exc
        if clash:
            problems.append(
                validating.name_clash("InferenceModel", im.metadata.name, "InferenceEnsemble")
            )
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    def admit_ensemble(self, body: kopf.Body, world: World) -> None:
        """Webhook: refuse unknown members and bad wiring."""
        try:
            ie = api.InferenceEnsemble.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            raise kopf.AdmissionError(_invalid(exc), code=422) from exc
        _, problems = self._ensemble_problems(ie, world, admitting=True)
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)


def replacing(old: Any, new: Any) -> Any:
    """What a JSON merge patch (kopf's status patch) must carry to turn ``old`` into ``new``:
    ``new``, with None for every key of a dict that ``new`` dropped (a merge patch leaves a
    key it does not mention as it was)."""
    if not isinstance(new, Mapping) or not isinstance(old, Mapping):
        return new
    out = {key: replacing(old.get(key), value) for key, value in new.items()}
    out.update({key: None for key in old if key not in new})
    return out


def _drifted(desired: workloads.Obj, children: observe.Children) -> bool:
    """Whether an owned object is missing or differs from the render in what matters."""
    current = children.present(desired["kind"], desired["metadata"]["name"])
    if current is None:
        return True
    if desired["kind"] == "Deployment":
        want, have = desired["spec"], current.get("spec") or {}
        annotations = (have.get("template") or {}).get("metadata", {}).get("annotations") or {}
        want_rev = want["template"]["metadata"]["annotations"][workloads.REVISION_LABEL]
        # Without replicas in the render, an autoscaler owns them: any count is right.
        replicas_drifted = "replicas" in want and have.get("replicas") != want["replicas"]
        return bool(annotations.get(workloads.REVISION_LABEL) != want_rev or replicas_drifted)
    if desired["kind"] == "ConfigMap":
        return _owners(current) != _owners(desired) or current.get("data") != desired.get("data")
    if desired["kind"] == "Service":
        return bool((current.get("spec") or {}).get("selector") != desired["spec"]["selector"])
    return False


def _hand_off(objects: list[workloads.Obj], children: observe.Children) -> list[workloads.Obj]:
    """A revision's ConfigMap goes to its ReplicaSet once one exists, so that it is
    garbage-collected with it (``revisionHistoryLimit``)."""
    for obj in objects:
        if obj["kind"] != "ConfigMap":
            continue
        revision = (obj["metadata"].get("labels") or {}).get(workloads.REVISION_LABEL)
        owner = _replica_set_of(children.replica_sets, revision) if revision else None
        if owner is not None:
            obj["metadata"]["ownerReferences"] = [_owner_reference(owner)]
    return objects


def _owners(obj: workloads.Obj) -> list[tuple[str, str]]:
    references = obj["metadata"].get("ownerReferences") or []
    return [(o.get("kind", ""), o.get("uid", "")) for o in references]


def _replica_set_of(replica_sets: list[workloads.Obj], revision: str) -> workloads.Obj | None:
    """The ReplicaSet whose pods run ``revision``."""
    for rs in replica_sets:
        template = (rs.get("spec") or {}).get("template") or {}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        if annotations.get(workloads.REVISION_LABEL) == revision and not rs["metadata"].get(
            "deletionTimestamp"
        ):
            return rs
    return None


def _owner_reference(obj: workloads.Obj) -> workloads.Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": False,
        "blockOwnerDeletion": False,
    }


@contextlib.contextmanager
def _counted(kind: str, body: kopf.Body, patch: kopf.Patch) -> Iterator[None]:
    """The operator's own metrics around one handler run: its outcome, then the resource's
    status as it will be once kopf applies the patch."""
    with telemetry.counted(kind):
        yield
    merged = {**dict(body.get("status") or {}), **dict(patch.get("status") or {})}
    status = {k: v for k, v in merged.items() if v is not None}  # None: deleted by the patch
    meta = body.get("metadata") or {}
    telemetry.status(kind, meta.get("namespace", ""), meta.get("name", ""), status)


def _reported(body: Mapping[str, Any]) -> bool:
    """Whether a reconcile of this resource has reported a status: before that (a new
    resource) no autoscaler of ours can exist, and deleting one by name is two wasted
    requests per creation (a 404 each; without KEDA's CRD, a discovery miss)."""
    return bool((body.get("status") or {}).get("observedGeneration"))


def _steady(body: Mapping[str, Any]) -> bool:
    """Whether a reconcile's result follows from what it reads alone: not while a canary
    rollout is under way (steps and analyses follow the clock and the pods' metrics), nor
    for tiered models (their load is read from the pods) or autoscaled ones (the
    autoscaler's status is read from the API)."""
    spec = body.get("spec") or {}
    if spec.get("tiers") or spec.get("scaling"):
        return False
    if (spec.get("rollout") or {}).get("strategy") == "Canary":
        rollout = (body.get("status") or {}).get("rollout") or {}
        return rollout.get("phase") == "Healthy" and not rollout.get("canaryRevision")
    return True


def _related(kind: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Other resources a reconcile reads: an ensemble's members."""
    if kind != "InferenceEnsemble":
        return []
    steps = (body.get("spec") or {}).get("steps") or []
    return [("InferenceModel", str(s.get("modelRef"))) for s in steps if s.get("modelRef")]


def spread(interval: float) -> Callable[..., float]:
    """kopf's initial delay of a resource's timer: an offset within the interval, fixed
    per resource (from its uid), so timers of resources created together do not tick
    together."""

    def delay(uid: str | None = None, name: str | None = None, **_: Any) -> float:
        seed = (uid or name or "").encode()
        return interval * (zlib.crc32(seed) / 2**32)

    return delay


def _spec_changed(operation: str | None, old: kopf.Body | None, new: kopf.Body) -> bool:
    """Whether an admission request creates a resource or changes its spec."""
    if operation != "UPDATE" or old is None:
        return operation == "CREATE" or old is None
    return dict(old.get("spec") or {}) != dict(new.get("spec") or {})


#: Every kind kopf indexes: our resources by (namespace, name), owned objects by workload.
_INDEXED = ("InferenceModel", "InferenceEnsemble", *observe.CHILDREN)


def _index_name(kind: str) -> str:
    return f"{kind.lower()}_index"


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    """What an index keeps of an object: a copy, without ``metadata.managedFields`` (every
    writer's field sets, often the larger part of a pod or Deployment as the API server
    returns it; nothing here reads them)."""
    snapshot: dict[str, Any] = _clone(dict(body))
    metadata = snapshot.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return snapshot


def _clone(value: Any) -> Any:
    """A copy of JSON data, several times faster than ``copy.deepcopy``: every event of every
    owned object is indexed, thousands a minute while many models are created."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _register_indexes(registry: kopf.OperatorRegistry, field_manager: str) -> None:
    """kopf indexes of our resources and of every object we own."""

    def by_name(body: kopf.Body, namespace: str | None, name: str | None, **_: Any) -> Any:
        return {(namespace or "", name or ""): _snapshot(body)}

    def by_workload(body: kopf.Body, namespace: str | None, labels: Any, **_: Any) -> Any:
        key = observe.child_key(namespace, labels)
        return {key: _snapshot(body)} if key else None

    for kind, resource in (("InferenceModel", MODELS), ("InferenceEnsemble", ENSEMBLES)):
        kopf.index(*resource, id=_index_name(kind), registry=registry)(by_name)
    for kind, (group, version, plural) in observe.CHILDREN.items():
        kopf.index(
            group,
            version,
            plural,
            id=_index_name(kind),
            labels={observe.MANAGED_BY: field_manager},
            registry=registry,
        )(by_workload)


def build(cfg: settings.Settings, client: k8s.Client) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator, bound to ``cfg`` and ``client``."""
    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(cfg, client)
    _register_indexes(registry, workloads.MANAGER)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        prefix = cfg.annotation_prefix
        # Our own prefix: GitOps tools are told to ignore `polyserve.io/*` annotations.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=prefix, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{prefix}/finalizer"
        settings.posting.level = logging.INFO
        # A timer caught mid-call when its resource is deleted is polled for its exit before
        # kopf releases the finalizer: every 60 s by default, i.e. `kubectl delete` hangs.
        settings.background.cancellation_polling = 1.0
        # One replica (Recreate): peering would only pause, it elects no leader.
        settings.peering.standalone = True
        # Watch only what we own: the API server filters, so the operator never holds the
        # cluster's other pods or ConfigMaps in memory.
        for group, version, plural in observe.CHILDREN.values():
            selector = (group, version, plural) if group else (version, plural)
            settings.watching.label_selectors[selector] = (
                f"{observe.MANAGED_BY}={workloads.MANAGER}"
            )
        if cfg.webhook.enabled:
            # TLS from the files, re-read every reload_seconds (cert-manager's renewals).
            settings.admission.server = admission.server(cfg.webhook)
            settings.admission.managed = cfg.webhook.managed_configuration

    if cfg.kubeconfig is not None:

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            c = client.configuration
            token = (c.api_key or {}).get("authorization") or (c.api_key or {}).get("BearerToken")
            scheme, _sep, value = (token or "").partition(" ")
            return kopf.ConnectionInfo(
                server=c.host,
                ca_path=c.ssl_ca_cert,
                insecure=not c.verify_ssl,
                scheme=scheme or None,
                token=value or None,
                certificate_path=c.cert_file,
                private_key_path=c.key_file,
            )

    interval = cfg.status_interval_seconds

    @kopf.on.create(*MODELS, registry=registry)
    @kopf.on.update(*MODELS, registry=registry)
    def reconcile_model(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        with _counted("InferenceModel", body, patch):
            reconciler.model(body, patch, World.from_kwargs(kwargs), force=True)

    offset = spread(interval)

    @kopf.on.resume(*MODELS, registry=registry)
    @kopf.timer(*MODELS, interval=interval, idle=interval, initial_delay=offset, registry=registry)
    def observe_model(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        # After a restart nothing is re-applied unless it is missing or drifted.
        reconciler.refresh("InferenceModel", body, patch, World.from_kwargs(kwargs))

    @kopf.on.create(*ENSEMBLES, registry=registry)
    @kopf.on.update(*ENSEMBLES, registry=registry)
    def reconcile_ensemble(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        with _counted("InferenceEnsemble", body, patch):
            reconciler.ensemble(body, patch, World.from_kwargs(kwargs), force=True)

    @kopf.on.resume(*ENSEMBLES, registry=registry)
    @kopf.timer(
        *ENSEMBLES, interval=interval, idle=interval, initial_delay=offset, registry=registry
    )
    def observe_ensemble(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        # Also how an ensemble follows its members: their configs are in the revision.
        reconciler.refresh("InferenceEnsemble", body, patch, World.from_kwargs(kwargs))

    # Bookkeeping only (optional: no finalizer, deletion never waits on it): the deleted
    # resource's in-memory state and metric series go with it.
    @kopf.on.delete(*MODELS, optional=True, registry=registry)
    def forget_model(namespace: str | None, name: str, **_: Any) -> None:
        reconciler.forget("InferenceModel", namespace or "", name)

    @kopf.on.delete(*ENSEMBLES, optional=True, registry=registry)
    def forget_ensemble(namespace: str | None, name: str, **_: Any) -> None:
        reconciler.forget("InferenceEnsemble", namespace or "", name)

    if cfg.webhook.enabled:  # kopf refuses to start with validators and no webhook server
        # Only creation and spec changes are checked: a DELETE, or an UPDATE that only
        # touches metadata (kopf releasing its finalizer), must pass even when the resource
        # has become invalid, or it would hang in Terminating (an ensemble whose member is
        # gone). The managed webhook configuration registers CREATE and UPDATE only.
        admitted: list[kopf.Operation] = ["CREATE", "UPDATE"]
        ignore = admission.ignore_failures(cfg.webhook)  # failurePolicy: see admission

        @kopf.on.validate(
            *MODELS,
            id="validate-inferencemodel",
            operations=admitted,
            ignore_failures=ignore,
            registry=registry,
        )
        def admit_model(body: kopf.Body, **kwargs: Any) -> None:
            # Validation has no side effects, so dry-run requests are answered the same way.
            if _spec_changed(kwargs.get("operation"), kwargs.get("old"), body):
                reconciler.admit_model(body, World.from_kwargs(kwargs))

        @kopf.on.validate(
            *ENSEMBLES,
            id="validate-inferenceensemble",
            operations=admitted,
            ignore_failures=ignore,
            registry=registry,
        )
        def admit_ensemble(body: kopf.Body, **kwargs: Any) -> None:
            if _spec_changed(kwargs.get("operation"), kwargs.get("old"), body):
                reconciler.admit_ensemble(body, World.from_kwargs(kwargs))

    return registry
