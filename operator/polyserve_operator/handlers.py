"""kopf handlers: validate, render, apply, observe, write status. Nothing else lives here.

Reconciliation is level-based: creation, every spec change, operator restarts (resume) and
a periodic timer all run the same function, which renders the desired objects from the spec,
applies them with server-side apply, observes the Deployment and pods, and writes
``status``. Running it twice changes nothing, so a restarted operator converges without
duplicates. Handlers are registered on an explicit registry built from settings, so
importing this module registers nothing.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
import pydantic

from polyserve_operator import api, conditions, k8s, observe, render, settings, validating
from polyserve_operator.render import placement, workloads

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


class Reconciler:
    """The reconciliation of both kinds, over one API client and one set of settings."""

    def __init__(self, cfg: settings.Settings, client: k8s.Client) -> None:
        self.cfg = cfg
        self.client = client

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
    ) -> None:
        previous = dict(body.get("status") or {})
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
            pool=w.hardware.pool,
            endpoints=workloads.endpoints(w).model_dump(exclude_none=True),
        )
        if previous.get("revision") != rev:
            kopf.info(body, reason="Rendered", message=f"applied revision {rev}")
        old_ready = {c.get("type"): c.get("status") for c in previous.get("conditions") or []}
        new = {c["type"]: c for c in status["conditions"]}
        if old_ready.get("Ready") != new["Ready"]["status"]:
            if new["Ready"]["status"] == "True":
                kopf.info(body, reason="Ready", message=new["Ready"]["message"])
            else:
                kopf.warn(
                    body,
                    reason=new["Ready"]["reason"],
                    message=new["Ready"]["message"] or "not ready",
                )
        elif new["Degraded"]["status"] == "True" and old_ready.get("Degraded") != "True":
            kopf.warn(body, reason=new["Degraded"]["reason"], message=new["Degraded"]["message"])
        # Only what changed: an unchanged status costs no API call and wakes no watcher.
        for key, value in status.items():
            if previous.get(key) != value:
                patch.status[key] = value

    def _observe(self, w: workloads.Workload) -> conditions.Observation:
        try:
            return observe.workload(self.client, w)
        except k8s.ApiError as exc:
            raise kopf.TemporaryError(f"observing the workload failed: {exc}", delay=10) from exc

    def _converge(
        self, body: kopf.Body, patch: kopf.Patch, w: workloads.Workload, *, force: bool
    ) -> None:
        """Apply when asked to (spec changes, restarts) or when the Deployment drifted from
        the rendered revision; then observe and report."""
        observation = self._observe(w)
        if force or _drifted(observation.deployment, w, workloads.revision(w, self.cfg)):
            self._apply(body, patch, w)
            observation = self._observe(w)
        self._report(body, patch, w, w.replicas, observation)

    def _apply(self, body: kopf.Body, patch: kopf.Patch, w: workloads.Workload) -> None:
        objects = render.objects(w, self.cfg)
        try:
            for obj in objects:
                self.client.apply(obj)
            if not any(o["kind"] == "PodDisruptionBudget" for o in objects):
                self.client.delete("policy/v1", "PodDisruptionBudget", w.owner.namespace, w.name)
        except k8s.ApiError as exc:
            problem = conditions.Problem("ApplyFailed", f"applying the workload failed: {exc}")
            self._fail(body, patch, problem, desired=w.replicas)
            kopf.warn(body, reason="ApplyFailed", message=str(exc))
            if exc.retryable:
                raise kopf.TemporaryError(str(exc), delay=10) from exc
            raise kopf.PermanentError(str(exc)) from exc

    def model(self, body: kopf.Body, patch: kopf.Patch, *, force: bool = True) -> None:
        """Reconcile one InferenceModel."""
        try:
            im = api.InferenceModel.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            self._invalid_spec(body, patch, _invalid(exc))
            return
        problems = validating.model(im.spec)
        if problems:
            self._invalid_spec(body, patch, "; ".join(problems))
            return
        self._converge(body, patch, render.model_workload(im), force=force)

    def ensemble(self, body: kopf.Body, patch: kopf.Patch, *, force: bool = True) -> None:
        """Reconcile one InferenceEnsemble (members are re-read every time)."""
        try:
            ie = api.InferenceEnsemble.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            self._invalid_spec(body, patch, _invalid(exc))
            return
        try:
            members, problems = self._ensemble_problems(ie)
        except k8s.ApiError as exc:
            raise kopf.TemporaryError(f"reading the members failed: {exc}", delay=10) from exc
        if problems:
            # A missing member may be created later: keep retrying, but say why in status.
            self._invalid_spec(body, patch, "; ".join(problems), permanent=False)
            return
        present = {k: v for k, v in members.items() if v is not None}
        self._converge(body, patch, render.ensemble_workload(ie, present), force=force)

    def _ensemble_problems(
        self, ie: api.InferenceEnsemble
    ) -> tuple[dict[str, api.InferenceModel | None], list[str]]:
        """The ensemble's members and what is wrong with it; raises k8s.ApiError."""
        namespace, name = ie.metadata.namespace, ie.metadata.name
        members = observe.members(self.client, namespace, {s.model_ref for s in ie.spec.steps})
        problems = validating.ensemble(ie.spec, members)
        if observe.exists(self.client, "InferenceModel", namespace, name):
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

    def admit_model(self, body: kopf.Body) -> None:
        """Webhook: refuse what the schema cannot."""
        try:
            im = api.InferenceModel.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            raise kopf.AdmissionError(_invalid(exc), code=422) from exc
        problems = validating.model(im.spec)
        try:
            clash = observe.exists(
                self.client, "InferenceEnsemble", im.metadata.namespace, im.metadata.name
            )
        except k8s.ApiError as exc:
            raise kopf.AdmissionError(f"cannot read the ensembles: {exc}", code=503) from exc
        if clash:
            problems.append(
                validating.name_clash("InferenceModel", im.metadata.name, "InferenceEnsemble")
            )
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    def admit_ensemble(self, body: kopf.Body) -> None:
        """Webhook: refuse unknown members and bad wiring."""
        try:
            ie = api.InferenceEnsemble.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            raise kopf.AdmissionError(_invalid(exc), code=422) from exc
        try:
            _, problems = self._ensemble_problems(ie)
        except k8s.ApiError as exc:
            raise kopf.AdmissionError(f"cannot read the members: {exc}", code=503) from exc
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)


def _drifted(deployment: dict[str, Any] | None, w: workloads.Workload, revision: str) -> bool:
    if deployment is None:
        return True
    spec = deployment.get("spec") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    return bool(
        annotations.get(f"{api.GROUP}/revision") != revision or spec.get("replicas") != w.replicas
    )


def build(cfg: settings.Settings, client: k8s.Client) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator, bound to ``cfg`` and ``client``."""
    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(cfg, client)

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
        if cfg.webhook.enabled:
            hook = cfg.webhook
            settings.admission.server = kopf.WebhookServer(
                addr=hook.addr,
                port=hook.port,
                host=hook.host,
                certfile=str(hook.certfile) if hook.certfile else None,
                pkeyfile=str(hook.pkeyfile) if hook.pkeyfile else None,
                cafile=str(hook.cafile) if hook.cafile else None,
                insecure=hook.insecure,
            )
            settings.admission.managed = hook.managed_configuration

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

    @kopf.on.resume(*MODELS, registry=registry)
    @kopf.on.create(*MODELS, registry=registry)
    @kopf.on.update(*MODELS, registry=registry)
    def reconcile_model(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconciler.model(body, patch)

    @kopf.timer(*MODELS, interval=interval, idle=interval, registry=registry)
    def observe_model(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconciler.model(body, patch, force=False)

    @kopf.on.resume(*ENSEMBLES, registry=registry)
    @kopf.on.create(*ENSEMBLES, registry=registry)
    @kopf.on.update(*ENSEMBLES, registry=registry)
    def reconcile_ensemble(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconciler.ensemble(body, patch)

    @kopf.timer(*ENSEMBLES, interval=interval, idle=interval, registry=registry)
    def observe_ensemble(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        # Also how an ensemble follows its members: their configs are in the revision.
        reconciler.ensemble(body, patch, force=False)

    if cfg.webhook.enabled:  # kopf refuses to start with validators and no webhook server

        @kopf.on.validate(*MODELS, id="validate-inferencemodel", registry=registry)
        def admit_model(body: kopf.Body, **_: Any) -> None:
            # Validation has no side effects, so dry-run requests are answered the same way.
            reconciler.admit_model(body)

        @kopf.on.validate(*ENSEMBLES, id="validate-inferenceensemble", registry=registry)
        def admit_ensemble(body: kopf.Body, **_: Any) -> None:
            reconciler.admit_ensemble(body)

    return registry
