"""Operator settings: pool labels, taints, images and defaults, from ``POLYSERVE_OPERATOR_*``.

Parsed once in ``main`` (or built explicitly by tests and ``polyserve render``) and passed
down; nothing else reads the environment. Placement is data, not code: a cluster whose GPU
nodes carry other labels or taints changes these, not the operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Toleration(BaseModel):
    """A pod toleration, in Kubernetes' field names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None


class GpuPool(BaseModel):
    """How GPU nodes are recognised and reserved."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Labels every GPU node has; NVIDIA GPU Feature Discovery sets this one.",
    )
    product_label: str = Field(
        default="nvidia.com/gpu.product",
        description="Node label naming the GPU model (GFD); used when a spec asks for one.",
    )
    resource: str = Field(
        default="nvidia.com/gpu",
        description="Extended resource the NVIDIA device plugin advertises.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", effect="NoSchedule")],
        description="GPU pools are usually tainted so CPU work stays off them.",
    )
    engine_cache_claim: str | None = Field(
        default=None,
        description=(
            "A PersistentVolumeClaim, by name in each model's namespace, for the engines "
            "built at load when a model's spec.engineCache names none: every model and pod "
            "of the namespace then reuses them (ReadWriteMany). Unset: an emptyDir per pod."
        ),
    )


class XeonPool(BaseModel):
    """How Xeon (CPU) nodes are recognised."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Labels every node of the CPU pool has; empty means any node.",
    )
    bf16_labels: list[str] = Field(
        default_factory=lambda: [
            "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
            "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
        ],
        description=(
            "Node Feature Discovery labels of which a node needs any one (value 'true') to "
            "serve bf16; AMX first, AVX512_BF16 as the older fallback. NFD writes cpuid "
            "features without underscores (AVX512BF16, AMXBF16)."
        ),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for a tainted CPU pool."
    )


class Images(BaseModel):
    """Worker images: one per pool, so a CPU pod never pulls CUDA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker_cpu: str = Field(
        default="ghcr.io/polyserve/worker:0.1.0-cpu",
        description="Worker with ONNX Runtime and OpenVINO (Dockerfile.worker, VARIANT=cpu).",
    )
    worker_gpu: str = Field(
        default="ghcr.io/polyserve/worker:0.1.0-gpu",
        description="Worker with TensorRT and ONNX Runtime GPU (Dockerfile.worker, VARIANT=gpu).",
    )
    pull_policy: str = Field(default="IfNotPresent", description="imagePullPolicy of workers.")


class Webhook(BaseModel):
    """The validating admission webhook (kopf's webhook server)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=False,
        description=(
            "Serve the validating webhook. Off by default: it needs a TLS certificate "
            "(cert-manager) the API server trusts; the CRD's CEL rules and status cover the rest."
        ),
    )
    addr: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(default=9443, description="Listen port (unprivileged, non-root).")
    host: str | None = Field(
        default=None,
        description="Hostname the API server calls, e.g. polyserve-operator.polyserve-system.svc.",
    )
    certfile: Path | None = Field(default=None, description="TLS certificate (PEM).")
    pkeyfile: Path | None = Field(default=None, description="TLS private key (PEM).")
    cafile: Path | None = Field(
        default=None, description="CA bundle the API server should trust (cert-manager's ca.crt)."
    )
    insecure: bool = Field(default=False, description="Plain HTTP: for tests only.")
    managed_configuration: str | None = Field(
        default="polyserve.io",
        description=(
            "Name of the ValidatingWebhookConfiguration the operator keeps up to date (kopf "
            "also keeps a MutatingWebhookConfiguration of that name, with no webhooks); None "
            "leaves them to the installer. The RBAC rules name it (resourceNames)."
        ),
    )
    failure_policy: Literal["Ignore", "Fail"] = Field(
        default="Ignore",
        description=(
            "What the API server does when the webhook cannot answer (an operator restart, "
            "a node drain). Ignore: the write goes through, the CRD's CEL rules still hold, "
            "and the reconciler reports what only the webhook would have refused as "
            "InvalidSpec in status: the checks are about validity, not security, so an "
            "operator outage never blocks writes. Fail: nothing is written without them."
        ),
    )
    reload_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How often the certificate files are re-read, in seconds (kopf's "
            "file_check_interval): a change (cert-manager's renewal) restarts the webhook "
            "server with the new certificate and updates the configuration's caBundle; no "
            "operator restart."
        ),
    )


class NetworkPolicy(BaseModel):
    """The NetworkPolicy the operator renders for each workload's pods."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description=(
            "Render one NetworkPolicy per workload (ingress only: egress stays open for "
            "artifact fetches). On by default: a cluster whose CNI enforces no NetworkPolicy "
            "ignores them, and one that does gets pods open only to what spec.network allows. "
            "false where another layer (a service mesh's authorization) owns pod ingress."
        ),
    )
    metrics_namespaces: list[str] = Field(
        default_factory=lambda: ["monitoring"],
        description=(
            "Namespaces whose pods may scrape the workers' metrics port 8002 (Prometheus); "
            "the operator's own namespace (operator_namespace) is always allowed."
        ),
    )


class Prometheus(BaseModel):
    """Where canary analysis reads the workers' metrics."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = Field(
        default=None,
        description=(
            "Prometheus for canary analysis (PromQL over Triton's metric names), e.g. "
            "http://prometheus.monitoring:9090; unset: the operator reads the pods' /metrics."
        ),
    )
    namespace_label: str = Field(
        default="namespace", description="The label Prometheus puts a pod's namespace in."
    )
    pod_label: str = Field(default="pod", description="The label Prometheus puts a pod's name in.")
    timeout_seconds: float = Field(default=5.0, gt=0, description="Per query.")


class Settings(BaseSettings):
    """Everything the operator is told by its environment (``POLYSERVE_OPERATOR_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="POLYSERVE_OPERATOR_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    gpu: GpuPool = Field(default_factory=GpuPool)
    xeon: XeonPool = Field(default_factory=XeonPool)
    images: Images = Field(default_factory=Images)
    webhook: Webhook = Field(default_factory=Webhook)
    prometheus: Prometheus = Field(default_factory=Prometheus)
    network_policy: NetworkPolicy = Field(default_factory=NetworkPolicy)
    field_manager: str = Field(
        default="polyserve-operator",
        description="Server-side apply field manager: what `managedFields` shows as ours.",
    )
    annotation_prefix: str = Field(
        default="polyserve.io",
        description="Prefix of kopf's bookkeeping annotations, so GitOps tools can ignore them.",
    )
    status_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description=(
            "Seconds between re-observations of each resource's pods (status refresh and drift "
            "repair); short enough that `kubectl get im` is fresh, long enough to spare the API."
        ),
    )
    namespaces: list[str] = Field(
        default_factory=list,
        description=(
            "Namespaces to watch (kopf's --namespace; globs such as 'team-*' allowed). Empty: "
            "every namespace, which needs ClusterRoles; a namespace-scoped install lists the "
            'namespaces its Roles cover, e.g. POLYSERVE_OPERATOR_NAMESPACES=\'["a", "b"]\'.'
        ),
    )
    readiness_addr: str = Field(
        default="0.0.0.0", description="Listen address of the operator's /readyz endpoint."
    )
    readiness_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description=(
            "Port of /readyz, served with the webhook only: ready while the webhook answers "
            "over TLS with a certificate its CA bundle verifies, so the webhook Service never "
            "sends the API server to an operator that cannot answer; 0 picks a free one."
        ),
    )
    metrics_addr: str = Field(
        default="0.0.0.0",
        description="Listen address of the operator's own Prometheus metrics (telemetry.py).",
    )
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description=(
            "Port of the operator's own metrics at /metrics (reconciles, errors, rollouts, "
            "tiers); 0 picks a free one. Not 8080: kopf's liveness endpoint has that one."
        ),
    )
    operator_namespace: str | None = Field(
        default=None,
        description=(
            "The namespace the operator runs in, allowed on the workers' metrics port by their "
            "NetworkPolicies: canary analysis and tiers read the pods' /metrics when no "
            "Prometheus is configured. Both installs set it from the pod's own namespace "
            "(the downward API); unset outside a cluster."
        ),
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig file; none means in-cluster credentials, else ~/.kube/config.",
    )
    default_shm_size: str = Field(
        default="1Gi",
        description="Memory-backed /dev/shm when a spec sets none; batching needs more than 64M.",
    )
    pre_stop_seconds: int = Field(
        default=5,
        ge=0,
        description=(
            "A worker pod's preStop sleep: the pod keeps serving while its endpoints are "
            "removed from Services and routes (a few seconds in most clusters), and only then "
            "gets SIGTERM, so no client is sent to a pod that has stopped taking work."
        ),
    )
    worker_exit_timeout_seconds: int = Field(
        default=30,
        ge=0,
        description="The worker's --exit-timeout-secs: how long requests in flight may finish.",
    )
    worker_grpc_transport: Literal["aio", "native"] = Field(
        default="aio",
        description=(
            "What serves every worker pod's gRPC port. aio: grpc.aio, which drains "
            "gracefully (GOAWAY first). native: HTTP/2 in Rust threads (the worker's "
            "--grpc-transport auto: native, or grpc.aio for a model with spec.tls), about 3x "
            "the gRPC throughput of aio for small models, but a client that keeps its "
            "connection through a rollout may get one UNAVAILABLE at the end of the old pod's "
            "drain: choose it where clients retry UNAVAILABLE."
        ),
    )
    termination_grace_seconds: int = Field(
        default=45,
        ge=0,
        description=(
            "Pod grace period: the preStop sleep plus the worker's exit timeout, with margin "
            "(the kubelet kills the pod when it ends)."
        ),
    )

    @model_validator(mode="after")
    def _grace_covers_the_drain(self) -> Settings:
        needed = self.pre_stop_seconds + self.worker_exit_timeout_seconds
        if self.termination_grace_seconds < needed:
            raise ValueError(
                f"termination_grace_seconds ({self.termination_grace_seconds}) must cover "
                f"pre_stop_seconds + worker_exit_timeout_seconds ({needed}): the kubelet "
                "would kill workers in the middle of their drain"
            )
        return self
