"""A worker workload -> ConfigMap, Deployment, Service and PodDisruptionBudget.

An InferenceModel and an InferenceEnsemble both become a ``Workload``: one Deployment of
polyserve-worker serving one or more models from a model repository in an emptyDir, filled
by one fetch init container per artifact and a ``configure`` init container that copies each
config.pbtxt from the revision's ConfigMap into place. Nothing is mounted inside the
repository: the worker mounts it read-only whole (a runtime cannot create a mount point
inside a read-only mount). Engines the worker builds at load (TensorRT from ONNX) go to a
volume of their own, an emptyDir or the spec's claim. The config of each revision is its
own immutable ConfigMap, so an old pod that restarts during a rollout reads its own
revision's config, and two revisions (stable and canary) run side by side. Every
container's command line comes from the worker's own functions
(``polyserve_worker.settings.to_args``, ``polyserve_worker.fetching.args``): the worker owns
its flags. Pure functions: no I/O, no kopf, no Kubernetes client.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from polyserve_operator import api, settings
from polyserve_operator.render import modelconfigs, placement
from polyserve_worker import fetching
from polyserve_worker import settings as worker_settings

Obj = dict[str, Any]

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
REPOSITORY = "/models"
CONFIG_DIR = "/etc/polyserve/config"
PVC_ROOT = "/mnt/pvc"
SECRET_DIR = "/var/run/secrets/polyserve/artifact"
REVISION_LABEL = f"{api.GROUP}/revision"
#: The app.kubernetes.io/managed-by label of every rendered object; the operator watches
#: exactly the objects that carry it.
MANAGER = "polyserve-operator"
#: Where the stable pods of a canary read their mirror settings (a ConfigMap the operator
#: writes: polyserve-worker --mirror-config).
MIRROR_DIR = "/etc/polyserve/mirror"
MIRROR_KEY = "mirror.yaml"
#: Where spec.tls's Secret is mounted (whole, so the kubelet's updates reach the pod).
TLS_DIR = "/etc/polyserve/tls"
#: The longest name Kubernetes takes for containers, volumes and label values.
DNS_LABEL_MAX = 63


@dataclass(frozen=True)
class Served:
    """One model in the worker's repository."""

    name: str
    pbtxt: str
    artifact: api.Artifact | None = None  # None: nothing to fetch (an ensemble's own config)
    builds_engines: bool = False  # the worker builds engines at load: mount the cache


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns the rendered objects."""

    kind: str
    name: str
    namespace: str
    uid: str | None


@dataclass(frozen=True)
class Workload:
    """Everything the object renderers need, from either kind of resource."""

    owner: Owner
    hardware: api.Hardware
    models: list[Served]
    replicas: int
    resources: api.Resources | None = None
    shm_size: int | str | None = None
    engine_cache: api.EngineCache | None = None
    rollout: api.Rollout | None = None
    scaling: api.Scaling | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)
    backend: str | None = None
    """The backend that serves (what ``auto`` picked): status.backend; None when the
    members of an ensemble each pick their own."""
    network: api.Network | None = None
    tls: api.Tls | None = None

    @property
    def name(self) -> str:
        return self.owner.name

    @property
    def entry(self) -> str:
        """The model clients call: the InferenceModel's own, or the ensemble's (its members
        are served too, but called through it); what canary analysis and autoscaling
        measure."""
        return self.owner.name


def labels(w: Workload) -> dict[str, str]:
    """Selector labels: stable for the life of the resource (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "polyserve-worker",
        "app.kubernetes.io/instance": w.name,
        f"{api.GROUP}/{w.owner.kind.lower()}": w.name,
    }


def metadata(w: Workload, name: str | None = None) -> Obj:
    meta: Obj = {
        "name": name or w.name,
        "namespace": w.owner.namespace,
        "labels": {
            **labels(w),
            "app.kubernetes.io/managed-by": MANAGER,
            "app.kubernetes.io/component": "worker",
            **w.extra_labels,
        },
    }
    if w.owner.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": api.API_VERSION,
                "kind": w.owner.kind,
                "name": w.owner.name,
                "uid": w.owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def revision(w: Workload, cfg: settings.Settings) -> str:
    """A short hash of what the pods run: a new value means new pods."""
    payload = {
        "image": image(w, cfg),
        "models": [
            [m.name, m.pbtxt, m.artifact.model_dump(mode="json") if m.artifact else None]
            for m in w.models
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def image(w: Workload, cfg: settings.Settings) -> str:
    return cfg.images.worker_gpu if w.hardware.pool == "gpu" else cfg.images.worker_cpu


def config_name(w: Workload, cfg: settings.Settings) -> str:
    """The ConfigMap of this revision: ``<workload>-<revision>``."""
    return f"{w.name}-{revision(w, cfg)}"


def config_map(w: Workload, cfg: settings.Settings) -> Obj:
    """The worker's model configs of one revision, one ``NAME.pbtxt`` key per model.

    Immutable: a new config is a new revision and a new ConfigMap. It is owned by the
    resource until the revision's ReplicaSet exists; the operator then hands it to the
    ReplicaSet, so it is garbage-collected with it (``revisionHistoryLimit``)."""
    meta = metadata(w, config_name(w, cfg))
    meta["labels"][REVISION_LABEL] = revision(w, cfg)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {f"{m.name}.pbtxt": m.pbtxt for m in w.models},
    }


def dns_label(prefix: str, name: str) -> str:
    """``prefix-name`` as a DNS label (at most 63 characters). A name that does not fit is
    cut and given a hash of the whole, so two long names never collide once cut."""
    whole = f"{prefix}-{name}"
    if len(whole) <= DNS_LABEL_MAX:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
    return f"{whole[: DNS_LABEL_MAX - 9].rstrip('-')}-{digest}"


def _source(artifact: api.Artifact) -> tuple[str, Obj | None, Obj | None]:
    """The URI the fetcher reads, and the PVC volume and mount it needs (pvc:// only)."""
    parts = urlsplit(artifact.uri)
    if parts.scheme != "pvc":
        return artifact.uri, None, None
    claim = parts.netloc
    volume = {
        "name": dns_label("pvc", claim),
        "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
    }
    mount = {"name": volume["name"], "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
    return artifact.uri, volume, mount


def _init_container(name: str, w: Workload, cfg: settings.Settings, args: list[str]) -> Obj:
    return {
        "name": name,
        "image": image(w, cfg),
        "imagePullPolicy": cfg.images.pull_policy,
        "command": ["polyserve-worker"],
        "args": args,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
        # A failed fetch's last log line (what to change) becomes its termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _fetcher(m: Served, w: Workload, cfg: settings.Settings) -> tuple[Obj, list[Obj]]:
    assert m.artifact is not None
    uri, pvc_volume, pvc_mount = _source(m.artifact)
    digest = m.artifact.digest.removeprefix("sha256:") if m.artifact.digest else None
    args = fetching.args(uri, f"{REPOSITORY}/{m.name}/1", digest)
    container = _init_container(dns_label("fetch", m.name), w, cfg, args)
    container["env"] = [{"name": fetching.PVC_ROOT_ENV, "value": PVC_ROOT}]
    mounts: list[Obj] = [
        {"name": "models", "mountPath": REPOSITORY},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Obj] = []
    if pvc_volume is not None and pvc_mount is not None:
        volumes.append(pvc_volume)
        mounts.append(pvc_mount)
    if m.artifact.secret_ref is not None:
        secret = m.artifact.secret_ref.name
        container["envFrom"] = [{"secretRef": {"name": secret}}]
        container["env"].append({"name": fetching.SECRET_DIR_ENV, "value": SECRET_DIR})
        name = dns_label("secret", secret)
        volumes.append({"name": name, "secret": {"secretName": secret}})
        mounts.append({"name": name, "mountPath": SECRET_DIR, "readOnly": True})
    container["volumeMounts"] = mounts
    return container, volumes


def _configurer(w: Workload, cfg: settings.Settings) -> Obj:
    """The last init container: each config.pbtxt from the ConfigMap into the repository."""
    container = _init_container(
        "configure", w, cfg, fetching.configure_args(CONFIG_DIR, REPOSITORY)
    )
    container["volumeMounts"] = [
        {"name": "models", "mountPath": REPOSITORY},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]
    return container


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _probe(path: str, period: int, failures: int, tls: bool = False) -> Obj:
    action: Obj = {"path": path, "port": "http"}
    if tls:
        action["scheme"] = "HTTPS"  # the kubelet does not verify the certificate
    return {
        "httpGet": action,
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
    }


def worker_settings_for(w: Workload, cfg: settings.Settings) -> dict[str, Any]:
    """The worker's settings in a pod of this workload (its flags, rendered by ``to_args``)."""
    return {
        "model_repository": REPOSITORY,
        "http_port": HTTP_PORT,
        "grpc_port": GRPC_PORT,
        "metrics_port": METRICS_PORT,
        "model_control_mode": "none",
        "strict_readiness": True,
        # A model that cannot load ends the process with the reason as its termination
        # message: status shows it within seconds, not after the startup probe's 10 minutes.
        "exit_on_error": True,
        "exit_timeout_secs": cfg.worker_exit_timeout_seconds,
        # native where it can serve (auto: grpc.aio under TLS, which native lacks)
        **({"grpc_transport": "auto"} if cfg.worker_grpc_transport == "native" else {}),
    }


def engine_cache_volume(w: Workload, cfg: settings.Settings) -> Obj:
    """The engine cache: the claim the spec names, else the operator's default claim, else
    an emptyDir (kept while the pod lives, so a restarted container loads the engines its
    predecessor built)."""
    claim = (w.engine_cache.claim_name if w.engine_cache else None) or cfg.gpu.engine_cache_claim
    if claim:
        return {"name": "engines", "persistentVolumeClaim": {"claimName": claim}}
    return {"name": "engines", "emptyDir": {}}


def revision_name(w: Workload, rev: str) -> str:
    """The Deployment of one revision under the Canary strategy: ``<workload>-<revision>``."""
    return f"{w.name}-{rev}"


def deployment(
    w: Workload,
    cfg: settings.Settings,
    *,
    name: str | None = None,
    replicas: int | None = None,
    per_revision: bool = False,
) -> Obj:
    """The worker Deployment: fetch init containers, the worker, probes, placement.

    ``per_revision`` (the Canary strategy) selects this revision's pods only, so two
    revisions' Deployments never claim each other's pods."""
    init_containers: list[Obj] = []
    volumes: list[Obj] = [
        {"name": "models", "emptyDir": {}},
        {"name": "config", "configMap": {"name": config_name(w, cfg)}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "shm",
            "emptyDir": {"medium": "Memory", "sizeLimit": w.shm_size or cfg.default_shm_size},
        },
    ]
    seen_volumes = {v["name"] for v in volumes}
    for m in w.models:
        if m.artifact is None:
            continue
        container, extra = _fetcher(m, w, cfg)
        init_containers.append(container)
        for volume in extra:
            if volume["name"] not in seen_volumes:
                seen_volumes.add(volume["name"])
                volumes.append(volume)
    init_containers.append(_configurer(w, cfg))
    flags = worker_settings_for(w, cfg)
    mounts: list[Obj] = [
        {"name": "models", "mountPath": REPOSITORY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    if any(m.builds_engines for m in w.models):
        volumes.append(engine_cache_volume(w, cfg))
        mounts.append({"name": "engines", "mountPath": modelconfigs.ENGINE_CACHE_DIR})
    if w.rollout is not None and w.rollout.strategy == "Canary":
        # The stable pods copy requests to a canary when the rollout says so, through a
        # ConfigMap the operator rewrites (mounted whole: its updates reach the pod).
        volumes.append(
            {
                "name": "mirror",
                "configMap": {"name": f"{w.name}-mirror", "optional": True},
            }
        )
        mounts.append({"name": "mirror", "mountPath": MIRROR_DIR, "readOnly": True})
        flags["mirror_config"] = f"{MIRROR_DIR}/{MIRROR_KEY}"
    if w.tls is not None:
        # Readable by the pod's group (fsGroup) only; the worker re-reads a renewal.
        volumes.append(
            {"name": "tls", "secret": {"secretName": w.tls.secret_name, "defaultMode": 0o440}}
        )
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        flags["tls_cert_file"] = f"{TLS_DIR}/tls.crt"
        flags["tls_key_file"] = f"{TLS_DIR}/tls.key"
    tls = w.tls is not None
    worker: Obj = {
        "name": "worker",
        "image": image(w, cfg),
        "imagePullPolicy": cfg.images.pull_policy,
        "args": worker_settings.to_args(flags),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Loading a large model (or building a TensorRT engine) takes minutes: the startup
        # probe allows 10 of them before liveness may restart the pod, and asks every 2 s so
        # a pod is Ready within 2 s of its models.
        "startupProbe": _probe("/v2/health/ready", period=2, failures=300, tls=tls),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3, tls=tls),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3, tls=tls),
        # Endpoints are removed while the pod still serves; only then does SIGTERM start the
        # worker's drain, so no client is sent to a pod that has stopped taking work.
        "lifecycle": {"preStop": {"sleep": {"seconds": cfg.pre_stop_seconds}}},
        "resources": placement.resources(w.hardware, w.resources, cfg),
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": init_containers,
        "containers": [worker],
        "volumes": volumes,
    }
    selector = placement.node_selector(w.hardware, cfg)
    if selector:
        pod_spec["nodeSelector"] = selector
    node_affinity = placement.affinity(w.hardware, cfg)
    if node_affinity:
        pod_spec["affinity"] = node_affinity
    tolerations = placement.tolerations(w.hardware, cfg)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    rollout = w.rollout or api.Rollout()
    pod_meta = metadata(w)
    pod_meta.pop("name")
    pod_meta.pop("namespace")
    pod_meta.pop("ownerReferences", None)
    rev = revision(w, cfg)
    pod_meta["labels"][REVISION_LABEL] = rev
    pod_meta["annotations"] = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        REVISION_LABEL: rev,
    }
    selector = {**labels(w), REVISION_LABEL: rev} if per_revision else labels(w)
    rendered: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(w, name),
        "spec": {
            "replicas": w.replicas if replicas is None else replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 900,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                # Default: a new pod is Ready before an old one goes, so serving never stops.
                "rollingUpdate": {
                    "maxSurge": rollout.max_surge if rollout.max_surge is not None else 1,
                    "maxUnavailable": (
                        rollout.max_unavailable if rollout.max_unavailable is not None else 0
                    ),
                },
            },
            "template": {"metadata": pod_meta, "spec": pod_spec},
        },
    }
    if w.scaling is not None and replicas is None:
        # An autoscaler owns the replicas: left out, so the apply never fights it.
        del rendered["spec"]["replicas"]
    return rendered


def service(w: Workload, *, name: str | None = None, revision_: str | None = None) -> Obj:
    """The Service clients use: OIP over HTTP and gRPC, and metrics. ``revision_`` narrows it
    to one revision's pods (a canary's stable and canary Services)."""
    selector = {**labels(w), REVISION_LABEL: revision_} if revision_ else labels(w)
    grpc: Obj = {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}
    if w.tls is None:
        grpc["appProtocol"] = "kubernetes.io/h2c"  # HTTP/2 in clear text
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(w, name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                grpc,
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def disruption_budget(w: Workload) -> Obj | None:
    """At most one replica down during voluntary disruptions; none for a single replica
    (a PDB there would block node drains forever)."""
    if w.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(w),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(w)}},
    }


def endpoints(w: Workload) -> api.Endpoints:
    host = f"{w.name}.{w.owner.namespace}.svc"
    return api.Endpoints(
        http=f"{'https' if w.tls is not None else 'http'}://{host}:{HTTP_PORT}",
        grpc=f"{host}:{GRPC_PORT}",
        metrics=f"http://{host}:{METRICS_PORT}/metrics",
    )


def objects(w: Workload, cfg: settings.Settings) -> list[Obj]:
    """Every object of the workload, in apply order (config before the pods that read it)."""
    result = [config_map(w, cfg), deployment(w, cfg), service(w)]
    pdb = disruption_budget(w)
    if pdb is not None:
        result.append(pdb)
    return result
