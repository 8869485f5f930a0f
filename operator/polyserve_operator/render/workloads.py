"""A worker workload -> ConfigMap, Deployment, Service and PodDisruptionBudget.

An InferenceModel and an InferenceEnsemble both become a ``Workload``: one Deployment of
polyserve-worker serving one or more models from a model repository in an emptyDir, filled
by one fetch init container per artifact, with each config.pbtxt from the ConfigMap. Pure
functions: no I/O, no kopf, no Kubernetes client.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from polyserve_operator import api, settings
from polyserve_operator.render import placement

Obj = dict[str, Any]

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
REPOSITORY = "/models"
PVC_ROOT = "/mnt/pvc"
SECRET_DIR = "/var/run/secrets/polyserve/artifact"
WORKER_EXIT_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Served:
    """One model in the worker's repository."""

    name: str
    pbtxt: str
    artifact: api.Artifact | None = None  # None: nothing to fetch (an ensemble's own config)


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
    rollout: api.Rollout | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.owner.name


def labels(w: Workload) -> dict[str, str]:
    """Selector labels: stable for the life of the resource (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "polyserve-worker",
        "app.kubernetes.io/instance": w.name,
        f"{api.GROUP}/{w.owner.kind.lower()}": w.name,
    }


def _metadata(w: Workload, name: str | None = None) -> Obj:
    meta: Obj = {
        "name": name or w.name,
        "namespace": w.owner.namespace,
        "labels": {
            **labels(w),
            "app.kubernetes.io/managed-by": "polyserve-operator",
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


def config_map(w: Workload) -> Obj:
    """The worker's model configs, one ``NAME.pbtxt`` key per model."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(w),
        "data": {f"{m.name}.pbtxt": m.pbtxt for m in w.models},
    }


def _source(artifact: api.Artifact) -> tuple[str, Obj | None, Obj | None]:
    """The URI the fetcher reads, and the PVC volume and mount it needs (pvc:// only)."""
    parts = urlsplit(artifact.uri)
    if parts.scheme != "pvc":
        return artifact.uri, None, None
    claim = parts.netloc
    volume = {
        "name": f"pvc-{claim}"[:63],
        "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
    }
    mount = {"name": volume["name"], "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
    return artifact.uri, volume, mount


def _fetcher(m: Served, w: Workload, cfg: settings.Settings) -> tuple[Obj, list[Obj]]:
    assert m.artifact is not None
    uri, pvc_volume, pvc_mount = _source(m.artifact)
    args = ["fetch", uri, f"{REPOSITORY}/{m.name}/1"]
    if m.artifact.digest:
        args += ["--sha256", m.artifact.digest.removeprefix("sha256:")]
    mounts: list[Obj] = [
        {"name": "models", "mountPath": REPOSITORY},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Obj] = []
    container: Obj = {
        "name": f"fetch-{m.name}"[:63].rstrip("-"),
        "image": image(w, cfg),
        "imagePullPolicy": cfg.images.pull_policy,
        "command": ["polyserve-worker"],
        "args": args,
        "env": [{"name": "POLYSERVE_FETCH_PVC_ROOT", "value": PVC_ROOT}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
    }
    if pvc_volume is not None and pvc_mount is not None:
        volumes.append(pvc_volume)
        mounts.append(pvc_mount)
    if m.artifact.secret_ref is not None:
        secret = m.artifact.secret_ref.name
        container["envFrom"] = [{"secretRef": {"name": secret}}]
        container["env"].append({"name": "POLYSERVE_FETCH_SECRET_DIR", "value": SECRET_DIR})
        name = f"secret-{secret}"[:63].rstrip("-")
        volumes.append({"name": name, "secret": {"secretName": secret}})
        mounts.append({"name": name, "mountPath": SECRET_DIR, "readOnly": True})
    container["volumeMounts"] = mounts
    return container, volumes


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _probe(path: str, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
    }


def deployment(w: Workload, cfg: settings.Settings) -> Obj:
    """The worker Deployment: fetch init containers, the worker, probes, placement."""
    init_containers: list[Obj] = []
    volumes: list[Obj] = [
        {"name": "models", "emptyDir": {}},
        {"name": "config", "configMap": {"name": w.name}},
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
    worker_mounts: list[Obj] = [
        {"name": "models", "mountPath": REPOSITORY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    worker_mounts += [
        {
            "name": "config",
            "mountPath": f"{REPOSITORY}/{m.name}/config.pbtxt",
            "subPath": f"{m.name}.pbtxt",
            "readOnly": True,
        }
        for m in w.models
    ]
    worker: Obj = {
        "name": "worker",
        "image": image(w, cfg),
        "imagePullPolicy": cfg.images.pull_policy,
        "args": [
            "--model-repository",
            REPOSITORY,
            "--http-port",
            str(HTTP_PORT),
            "--grpc-port",
            str(GRPC_PORT),
            "--metrics-port",
            str(METRICS_PORT),
            "--model-control-mode",
            "none",
            "--strict-readiness",
            "--exit-timeout-secs",
            str(WORKER_EXIT_TIMEOUT_SECONDS),
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Loading a large model (or building a TensorRT engine) takes minutes: the startup
        # probe allows 10 of them before liveness may restart the pod.
        "startupProbe": _probe("/v2/health/ready", period=5, failures=120),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "resources": placement.resources(w.hardware, w.resources, cfg),
        "securityContext": _container_security(),
        "volumeMounts": worker_mounts,
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
    pod_meta = _metadata(w)
    pod_meta.pop("name")
    pod_meta.pop("namespace")
    pod_meta.pop("ownerReferences", None)
    pod_meta["annotations"] = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        f"{api.GROUP}/revision": revision(w, cfg),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(w),
        "spec": {
            "replicas": w.replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 900,
            "selector": {"matchLabels": labels(w)},
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


def service(w: Workload) -> Obj:
    """The Service clients use: OIP over HTTP and gRPC, and metrics."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(w),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(w),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
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
        "metadata": _metadata(w),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(w)}},
    }


def endpoints(w: Workload) -> api.Endpoints:
    host = f"{w.name}.{w.owner.namespace}.svc"
    return api.Endpoints(
        http=f"http://{host}:{HTTP_PORT}",
        grpc=f"{host}:{GRPC_PORT}",
        metrics=f"http://{host}:{METRICS_PORT}/metrics",
    )


def objects(w: Workload, cfg: settings.Settings) -> list[Obj]:
    """Every object of the workload, in apply order (config before the pods that read it)."""
    result = [config_map(w), deployment(w, cfg), service(w)]
    pdb = disruption_budget(w)
    if pdb is not None:
        result.append(pdb)
    return result
