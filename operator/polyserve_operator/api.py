"""The custom resources, ``polyserve.io/v1alpha1``: the single source of ``crds/``.

Field docstrings become the CRD descriptions, so ``kubectl explain im.spec`` teaches the API.
The worker's model configuration (``polyserve_worker.worker_config.ModelConfigSpec``) is embedded
as-is: it is the contract with the worker, in Triton's field names, imported, never copied.
This module knows nothing of kopf or the Kubernetes client.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from polyserve_worker import config as worker_config

GROUP = "polyserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Pool = Literal["xeon", "gpu"]
#: hardware.backend values; what each means and where it runs is ``render.engines`` (from the
#: worker's backend registry), and a test keeps the two lists equal.
Backend = Literal[
    "auto",
    "onnxruntime",
    "openvino",
    "pytorch",
    "tensorflow",
    "tensorrt",
    "onnxruntime-cuda",
    "pytorch-cuda",
]

#: Kubernetes' quantity syntax (resource.Quantity): `2`, `500m`, `4Gi`, `1e3`.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: A count or a percentage, as a Deployment's maxSurge and maxUnavailable take.
INT_OR_PERCENT_PATTERN = r"^[0-9]+%?$"


def _int_or_string(pattern: str) -> WithJsonSchema:
    """The schema of an int-or-string field whose string form must match ``pattern``
    (checked here and by the API server, so a malformed value never reaches a rendered
    object)."""
    return WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": pattern}],
        }
    )


# A resource quantity: `2`, `500m`, `4Gi`. Kubernetes' own schema says int-or-string.
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)],
    _int_or_string(QUANTITY_PATTERN),
]
IntOrPercent = Annotated[
    int | Annotated[str, StringConstraints(pattern=INT_OR_PERCENT_PATTERN)],
    _int_or_string(INT_OR_PERCENT_PATTERN),
]

ARTIFACT_URI_PATTERN = r"^(s3|gs|gcs|https?|pvc|file)://.+"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )


class SecretRef(_Model):
    """A Secret in the resource's namespace."""

    name: str = Field(min_length=1)
    """Name of the Secret."""


class Artifact(_Model):
    """Where the model files come from; the init container fetches them before the worker starts."""

    uri: str = Field(pattern=ARTIFACT_URI_PATTERN)
    """s3://bucket/path, gs://bucket/path, https://host/path, pvc://claim/path (a
    PersistentVolumeClaim in the namespace, mounted read-only) or file:///path (development:
    a path inside the worker image). A directory is copied whole into the model's version
    directory; a single file keeps its name (e.g. model.onnx)."""
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    """Expected sha256 of a single-file artifact; a mismatch fails the fetch. Changing the
    digest or the uri makes a new revision."""
    secret_ref: SecretRef | None = None
    """Credentials for the fetch: every key becomes an environment variable of the init
    container (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), and the
    Secret is also mounted at /var/run/secrets/polyserve/artifact (e.g. a GCS key file
    named gcs.json)."""


class ModelFormat(_Model):
    """The format of the model files."""

    name: Literal["onnx", "openvino", "tensorrt", "pytorch", "tensorflow"]
    """File format: onnx (model.onnx), openvino (a directory with model.xml and model.bin),
    tensorrt (model.plan, an engine built for one GPU and TensorRT version), pytorch
    (model.pt TorchScript, or model.pt2 torch.export), tensorflow (a SavedModel directory)."""
    version: str | None = None
    """Format version, e.g. the ONNX opset; informational."""


class Gpu(_Model):
    """GPUs per replica."""

    count: int = Field(default=1, ge=1)
    """GPUs per replica (the nvidia.com/gpu limit)."""
    product: str | None = None
    """GPU product as GPU Feature Discovery labels it, e.g. NVIDIA-L4 or NVIDIA-A100-SXM4-80GB;
    unset means any GPU."""


class Hardware(_Model):
    """Where the model runs and on which engine."""

    pool: Pool
    """Node pool: xeon (CPU nodes: OpenVINO, ONNX Runtime, PyTorch, TensorFlow) or gpu (NVIDIA
    nodes: TensorRT, ONNX Runtime with the CUDA or TensorRT provider, PyTorch, TensorFlow)."""
    backend: Backend = "auto"
    """Inference engine. auto (the default) picks the fastest one that loads modelFormat on
    the pool (ONNX: TensorRT on gpu, OpenVINO on xeon) and status.backend says which.
    onnxruntime, pytorch and tensorflow run on either pool, on the pool's device; openvino
    on xeon; tensorrt on gpu (an ONNX file is built into an engine at load and cached);
    onnxruntime-cuda and pytorch-cuda are onnxruntime and pytorch on pool gpu."""
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32"
    """Compute precision. bf16 on the xeon pool places pods only on nodes with AMX or
    AVX512_BF16 (Node Feature Discovery labels)."""
    gpu: Gpu | None = None
    """GPUs per replica and their product; only for pool gpu (one GPU when unset)."""


class Resources(_Model):
    """Compute resources of one worker container, as in a pod spec."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. {cpu: 2, memory: 4Gi}."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources; the GPU limit comes from hardware.gpu, not from here."""


class EngineCache(_Model):
    """Where engines built at load are kept (TensorRT from an ONNX file, ONNX Runtime's
    TensorRT provider), by GPU product, TensorRT version and precision."""

    claim_name: str | None = None
    """A PersistentVolumeClaim in the namespace, so a new pod loads the engine another built
    (ReadWriteMany to share it between replicas); unset: an emptyDir per pod, which keeps it
    across container restarts."""


#: A duration as Argo Rollouts and Flagger write it: 30s, 5m, 1h, 1h30m, 250ms.
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]


class Pause(_Model):
    """Wait on this step: for a duration, or until a person promotes."""

    duration: Duration | None = None
    """How long to wait (30s, 5m, 1h); unset waits for `polyserve rollout promote NAME`."""


class StepAnalysis(_Model):
    """Run the canary's analysis at this step; any field given here overrides it."""

    interval: Duration | None = None
    """Time between measurements (the canary's analysis.interval when unset)."""
    count: int | None = Field(default=None, ge=1)
    """Successful measurements this step needs (the canary's analysis.count when unset)."""


class CanaryStep(_Model):
    """One step of a canary: exactly one of setWeight, pause and analysis."""

    set_weight: int | None = Field(default=None, ge=0, le=100)
    """Percent of the traffic the canary gets from now on."""
    pause: Pause | None = None
    """Wait, for a duration or for a person."""
    analysis: StepAnalysis | None = None
    """Measure the canary against its bounds and against stable; {} runs canary.analysis."""


MetricName = Literal["successRate", "latencyP95", "latencyP99", "queueP95", "mirrorAgreement"]


class MetricCheck(_Model):
    """One metric of an analysis and its bounds: absolute, relative to stable, or both."""

    name: MetricName
    """successRate (successful / all requests, from nv_inference_request_success and
    _failure), latencyP95 and latencyP99 (request time in ms, from the worker's
    polyserve_request_duration_seconds histogram), queueP95 (queue time in ms), or
    mirrorAgreement (copies of stable's requests on which the canary's answers agree, from
    polyserve_mirror_requests_total; needs canary.mirror)."""
    min: float | None = None
    """Lowest passing value (successRate and mirrorAgreement: a ratio, e.g. 0.99)."""
    max: float | None = None
    """Highest passing value (latency in milliseconds)."""
    relative_to_stable: float | None = Field(default=None, ge=0.01)
    """Bound relative to stable over the same interval: latency canary <= X x stable
    (e.g. 1.2), successRate canary >= X x stable (e.g. 0.99)."""


class Analysis(_Model):
    """How the canary is measured; each measurement covers one interval of live traffic."""

    interval: Duration = "30s"
    """Time between measurements; each measures the traffic of that interval."""
    count: int = Field(default=3, ge=1)
    """Successful measurements an analysis step needs before the rollout moves on."""
    failure_limit: int = Field(default=0, ge=0)
    """Failed measurements tolerated; one more rolls back."""
    inconclusive_limit: int = Field(default=2, ge=0)
    """Inconclusive measurements (too little traffic) tolerated; one more pauses the rollout
    for a person, saying how many samples it saw and needed."""
    min_samples: int = Field(default=20, ge=1)
    """Requests the canary must have served in an interval (mirrored comparisons for
    mirrorAgreement) for a measurement to count; fewer is Inconclusive, never a pass."""
    metrics: list[MetricCheck] = Field(
        default_factory=lambda: [MetricCheck(name="successRate", min=0.99)]
    )
    """What is measured; a successRate of at least 0.99 when unset."""


class Tolerance(_Model):
    """When a canary's output agrees with stable's."""

    max_abs_diff: float | None = Field(default=None, ge=0)
    """Largest absolute difference of any element."""
    max_rel_diff: float | None = Field(default=None, ge=0)
    """Largest relative difference of any element (an element agrees within either bound)."""
    top1: bool | None = None
    """Classifiers: the argmax along the last axis agrees on every row."""
    exact: bool | None = None
    """Every element equal (the default for integers, BOOL and BYTES)."""


class Mirror(_Model):
    """Stable pods copy a sample of live requests to the canary and compare the answers,
    output by output; clients only ever get stable's answer, never delayed."""

    percent: float = Field(default=10.0, ge=0, le=100)
    """Share of stable's requests copied."""
    rate: float | None = Field(default=None, ge=0.01)
    """At most this many copies per second per stable pod."""
    queue: int = Field(default=64, ge=1, le=4096)
    """Copies waiting to be sent, per stable pod; beyond it they are dropped and counted."""
    compare: dict[str, Tolerance] | None = None
    """Output name ('*' for the rest) -> tolerance; {'*': {maxAbsDiff: 1e-4, maxRelDiff:
    1e-3}} when unset."""


class ParentRef(_Model):
    """A Gateway API parent (a Gateway, and optionally one of its listeners)."""

    name: str
    """Name of the Gateway."""
    namespace: str | None = None
    """Namespace of the Gateway (the resource's own when unset)."""
    section_name: str | None = None
    """The listener to attach to."""


class GatewayRouting(_Model):
    """Split traffic with a Gateway API route (exact weights, per request)."""

    parent_refs: list[ParentRef] = Field(min_length=1)
    """The Gateway(s) the route attaches to."""
    route_kind: Literal["HTTPRoute", "GRPCRoute"] = "HTTPRoute"
    """HTTPRoute for REST clients, GRPCRoute for gRPC ones."""


class TrafficRouting(_Model):
    """How canary traffic is split; without it, by replica ratio behind the one Service."""

    gateway_api: GatewayRouting | None = Field(default=None, alias="gatewayAPI")
    """Gateway API: the operator renders <name>-stable and <name>-canary-<revision> Services
    and a route whose backendRef weights it moves."""


class Canary(_Model):
    """A canary rollout run by the operator: steps, analysis, mirroring, traffic routing."""

    steps: list[CanaryStep] = Field(min_length=1)
    """The steps, in order; after the last one the canary is promoted."""
    analysis: Analysis | None = None
    """The analysis that `analysis` steps run."""
    mirror: Mirror | None = None
    """Copy a sample of stable's requests to the canary and compare the answers."""
    traffic_routing: TrafficRouting | None = None
    """Exact weights through the Gateway API; replica ratio behind the Service when unset."""
    progress_deadline_seconds: int = Field(default=600, ge=1)
    """Longest a step may wait for the canary to be Ready before the rollout rolls back."""
    abort_scale_down_delay_seconds: int = Field(default=30, ge=0)
    """After a rollback, how long the canary's pods stay (weight 0) for inspection."""
    capacity_mode: Literal["Surge", "InPlace"] = "Surge"
    """Surge adds canary pods next to all stable ones; InPlace replaces stable pods one for
    one (GPU pools with no spare GPU)."""


class Rollout(_Model):
    """How a new revision replaces the old one."""

    strategy: Literal["RollingUpdate", "Canary"] = "RollingUpdate"
    """RollingUpdate replaces pods gradually (a Deployment's own rollout); Canary runs the
    new revision next to the stable one and moves traffic by `canary.steps`."""
    max_surge: IntOrPercent | None = None
    """RollingUpdate: extra pods during a rollout (Deployment maxSurge); 0 when GPUs are
    scarce."""
    max_unavailable: IntOrPercent | None = None
    """RollingUpdate: pods that may be missing during a rollout (Deployment maxUnavailable)."""
    canary: Canary | None = None
    """Canary: the steps, analysis, mirroring and routing (required with strategy Canary)."""


class Measurement(_Model):
    """One analysis measurement: what was measured and the verdict."""

    time: str
    """When it was taken (RFC 3339)."""
    verdict: Literal["Successful", "Failed", "Inconclusive"]
    """Failed when any metric is out of bounds; Inconclusive when there was too little traffic."""
    values: dict[str, float] | None = None
    """metric -> canary value (and `stable.<metric>` -> stable's, for relative bounds); a
    metric without enough traffic to measure is left out."""
    message: str = ""
    """Why, in words: which bound, or how many samples were seen vs needed."""


class RolloutStatus(_Model):
    """Where a canary rollout stands; everything a restarted operator needs to resume."""

    phase: Literal["Healthy", "Progressing", "Paused", "Promoting", "RolledBack"]
    """Healthy: one revision serves; Progressing: steps are running; Paused: waiting for time
    or a person; Promoting: the canary takes all traffic; RolledBack: the canary failed and
    stable serves."""
    stable_revision: str | None = None
    """The revision that serves (unless promoting)."""
    canary_revision: str | None = None
    """The revision being rolled out (or rolled back)."""
    step_index: int | None = None
    """The current step (0-based)."""
    step_started_at: str | None = None
    """When the current step started (RFC 3339)."""
    weight: int | None = None
    """Percent of traffic the canary should get now."""
    actual_weight: float | None = None
    """Percent it really gets: exact with Gateway API, the ready replicas' ratio without."""
    measurements: list[Measurement] | None = None
    """The current analysis step's measurements (and the last ones of a rollback)."""
    message: str | None = None
    """What is happening and, when paused or rolled back, what to do."""
    last_action: str | None = None
    """The last `polyserve.io/rollout-action` annotation value carried out."""


class ScalingMetric(_Model):
    """What an autoscaler keeps at its target, per replica."""

    type: Literal["InferenceRate", "QueueTimeP95", "InFlight"]
    """InferenceRate: requests per second per replica (nv_inference_request_success);
    QueueTimeP95: the p95 queue time in milliseconds (polyserve_queue_duration_seconds);
    InFlight: requests waiting or running per replica (nv_inference_pending_request_count)."""
    target: float = Field(ge=0.001)
    """The value to keep: requests/s, milliseconds or requests."""


class Keda(_Model):
    """KEDA's Prometheus trigger."""

    server_address: str | None = None
    """Prometheus KEDA queries (the operator's prometheus.url when unset)."""
    activation_threshold: float = Field(default=0.0, ge=0)
    """Below this value a deployment at zero stays at zero (minReplicas 0)."""
    fallback_replicas: int | None = Field(default=None, ge=0)
    """Replicas while Prometheus cannot be read (KEDA's fallback), after 3 failures."""


class Scaling(_Model):
    """Autoscale the replicas on a metric of the workers."""

    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas; 0 (scale to zero) needs engine KEDA."""
    max_replicas: int = Field(ge=1)
    """Most replicas."""
    metric: ScalingMetric
    """What is kept at its target."""
    engine: Literal["HPA", "KEDA"] = "HPA"
    """HPA: an autoscaling/v2 HorizontalPodAutoscaler on a Pods metric that Prometheus Adapter
    serves (the rules are in manifests/autoscaling/); KEDA: a ScaledObject with a Prometheus
    trigger. The operator never writes the replicas of a Deployment an autoscaler owns."""
    keda: Keda | None = None
    """KEDA's settings (engine KEDA)."""


class ReplicaBounds(_Model):
    """How many pods a tier may run."""

    min: int = Field(default=1, ge=0)
    """Fewest pods: while the model is on this tier (0 on a tier above the first lets it
    scale to zero), and kept warm when it is not."""
    max: int = Field(default=1, ge=1)
    """Most pods: what the tier runs while the model is on it (an autoscaler's ceiling)."""


class Tier(_Model):
    """One hardware profile a model can run on, and what it serves there."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=20)
    """Short name (xeon, xeon-bf16, gpu): status and events say it."""
    hardware: Hardware
    """Node pool, engine and precision on this tier."""
    replicas: ReplicaBounds = Field(default_factory=ReplicaBounds)
    """Pods on this tier."""
    capacity: float | None = Field(default=None, ge=0.001)
    """Requests per second one replica serves at the latency SLO. Unset: the one spec.tuning
    measured on this tier (status.tuning); give one or the other."""
    resources: Resources | None = None
    """Requests and limits on this tier (spec.resources when unset)."""


class Tiering(_Model):
    """When a model moves between its tiers."""

    latency_slo_ms: float | None = Field(default=None, ge=0.1)
    """p95 request latency the model must keep; above it, the next tier is wanted."""
    promote_above: float = Field(default=0.8, ge=0.01)
    """Up a tier when the rate stays above this share of the current tier's capacity."""
    demote_below: float = Field(default=0.5, ge=0.01)
    """Down a tier when the rate stays below this share of the lower tier's capacity."""
    promote_after: Duration = "1m"
    """How long the rate must stay high (or the SLO broken) before moving up."""
    demote_after: Duration = "5m"
    """How long the rate must stay low before moving down."""
    min_dwell: Duration = "5m"
    """Shortest time between two moves (and after a move given up)."""
    provisioning_deadline: Duration = "10m"
    """How long a move waits for the target tier's pods (a node being provisioned) before it
    is given up; it is given up sooner when the load falls back."""
    steps: list[CanaryStep] | None = None
    """How traffic moves to the new tier, as canary steps (setWeight 50 then 100 when unset);
    spec.rollout.canary.analysis applies to analysis steps."""


class TierMove(_Model):
    """One move between tiers, or one given up."""

    time: str
    """When it started (RFC 3339)."""
    from_: str = Field(alias="from")
    """The tier it left."""
    to: str
    """The tier it went to."""
    reason: str
    """Why: the rate (and latency) that asked for it, or why it was given up."""
    rate: float | None = None
    """Requests per second when it was decided."""


class TierStatus(_Model):
    """Where a tiered model runs and why."""

    current: str | None = None
    """The tier that serves."""
    since: str | None = None
    """When it started serving (RFC 3339)."""
    target: str | None = None
    """The tier a move under way goes to."""
    blocked: str | None = None
    """Why the target tier gets no pods (TierBlocked), with the scheduler's reason."""
    rate: float | None = None
    """Requests per second the model served lately."""
    p95_ms: float | None = None
    """Its p95 latency in milliseconds lately."""
    up_since: str | None = None
    """Since when the load asks for the next tier."""
    down_since: str | None = None
    """Since when the load allows the tier below."""
    move_started_at: str | None = None
    """When the move under way started."""
    moves: list[TierMove] | None = None
    """The last moves."""
    capacities: dict[str, float] | None = None
    """Tier name -> requests per second one replica serves at the SLO, as the decisions use it:
    the tier's declared capacity, else the one spec.tuning measured."""


class Tuning(_Model):
    """Measure the best worker config and the capacity of one replica on each hardware
    profile the model runs on: a Job per tier (or one for spec.hardware) on that pool, with
    the same worker image and artifact, runs polyserve tune. The result lands in
    status.tuning; the spec is never rewritten (`polyserve tune --from-status NAME` prints
    the patch to commit). A new artifact, hardware profile, worker image or tuning spec is
    measured again."""

    slo_p95_ms: float = Field(ge=0.1)
    """p95 request latency in milliseconds the tuned config must keep; the capacity is the
    throughput one replica reaches within it."""
    budget: Duration = "10m"
    """How long each tuning run may search (the Job is given 10 minutes more to start)."""
    protocol: Literal["grpc", "http"] = "grpc"
    """How the model's clients call it: the load is sent the same way."""


class TuningResult(_Model):
    """What one tuning run measured."""

    key: str
    """The inputs it measured (artifact, hardware profile, worker image, tuning spec)."""
    completed_at: str
    """When it finished (RFC 3339)."""
    capacity: float | None = None
    """Requests per second one replica served with the recommended config at p95 <= the SLO;
    None when no config met the SLO."""
    p95_ms: float | None = None
    """Its p95 latency in milliseconds at that rate."""
    baseline_capacity: float | None = None
    """The same for the config in the spec, measured first."""
    slo_p95_ms: float | None = None
    """The SLO it was measured against."""
    config: dict[str, Any] | None = None
    """The recommended config fields (backend, max_batch_size, dynamic_batching,
    instance_group, parameters, in Triton's names), to merge into spec.config."""
    node: str | None = None
    """The node the Job ran on."""
    node_type: str | None = None
    """The CPU model (and GPUs) the measurement ran on."""
    trials: int | None = None
    """Configs measured."""


class ProfileTuning(_Model):
    """The tuning of one hardware profile: a tier's, or the model's one spec.hardware."""

    tier: str = ""
    """The tier; empty for a model without tiers."""
    key: str
    """The inputs the current (or last) run measures."""
    phase: Literal["Running", "Succeeded", "Failed"]
    """Running: its Job runs; Succeeded: result is for this key; Failed: see message."""
    job: str | None = None
    """The tuning Job."""
    started_at: str | None = None
    """When the Job was created (RFC 3339)."""
    message: str = ""
    """What happened, for people (a failure's reason)."""
    result: TuningResult | None = None
    """The last successful measurement (for an older key while a new run is under way)."""


class AutoscalerStatus(_Model):
    """The autoscaler's own view, read from its status."""

    kind: str
    """HorizontalPodAutoscaler or ScaledObject."""
    name: str
    """Its name (the model's)."""
    active: bool | None = None
    """Whether it can read its metric and scale (HPA ScalingActive, KEDA Ready); None: it
    has not said yet."""
    current_replicas: int | None = None
    """Replicas it last saw."""
    desired_replicas: int | None = None
    """Replicas it wants."""
    metric: str | None = None
    """The metric's current value as it reads it (per replica for HPA)."""
    message: str | None = None
    """Why it cannot scale, or is limited, in its own words."""


class Condition(_Model):
    """A Kubernetes condition (the metav1.Condition shape)."""

    type: str
    """Ready, Progressing or Degraded."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """One CamelCase word a program can match, e.g. Unschedulable or CrashLoopBackOff."""
    message: str = ""
    """What happened and what to do about it, for people."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The .metadata.generation this condition was computed for."""


class Endpoints(_Model):
    """In-cluster addresses of the Service."""

    http: str | None = None
    """Open Inference Protocol over HTTP (KServe v2 REST)."""
    grpc: str | None = None
    """Open Inference Protocol over gRPC (Triton's service)."""
    metrics: str | None = None
    """Prometheus metrics."""


class Failure(_Model):
    """The last thing that went wrong, machine-readable."""

    reason: str
    """e.g. Unschedulable, CrashLoopBackOff, InvalidSpec, ApplyFailed."""
    message: str
    """Details and the fix."""
    time: str
    """When it was seen (RFC 3339)."""


class WorkloadStatus(_Model):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    conditions: list[Condition] | None = None
    """Ready, Progressing and Degraded, computed from the real Deployment and pods."""
    replicas: int | None = None
    """Pods the Deployment has."""
    ready_replicas: int | None = None
    """Pods that pass the readiness probe (the models are loaded)."""
    revision: str | None = None
    """Hash of the rendered worker configuration and artifact: a new value is a new revision."""
    pool: str | None = None
    """The node pool the pods are placed on."""
    backend: str | None = None
    """The worker backend that serves the model: hardware.backend, or the one auto picked."""
    endpoints: Endpoints | None = None
    """Where clients connect."""
    last_failure: Failure | None = None
    """The most recent failure, kept until the resource is Ready again."""
    rollout: RolloutStatus | None = None
    """The canary rollout (strategy Canary, or a move between tiers)."""
    tier: TierStatus | None = None
    """Where a tiered model runs, its load, and its last moves."""
    tuning: list[ProfileTuning] | None = None
    """spec.tuning's runs and results, one per hardware profile."""
    autoscaler: AutoscalerStatus | None = None
    """What the autoscaler of spec.scaling says (HPA or KEDA ScaledObject)."""


class LabelSelectorRequirement(_Model):
    """One term of a label selector."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None
    """For In and NotIn."""


class LabelSelector(_Model):
    """A Kubernetes label selector; {} selects everything."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class IpBlock(_Model):
    """Addresses outside the cluster (a load balancer's, a VPN's)."""

    cidr: str = Field(min_length=1)
    except_: list[str] | None = Field(default=None, alias="except")
    """Ranges inside cidr that stay refused."""


class NetworkPeer(_Model):
    """Clients allowed to connect, as a NetworkPolicy peer: podSelector alone selects pods of
    this namespace, namespaceSelector alone every pod of the namespaces it selects, both
    together those pods in those namespaces; ipBlock, addresses outside the cluster."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    ip_block: IpBlock | None = None

    @model_validator(mode="after")
    def _says_who(self) -> NetworkPeer:
        if self.namespace_selector is None and self.pod_selector is None and not self.ip_block:
            raise ValueError("give namespaceSelector, podSelector or ipBlock")
        if self.ip_block is not None and (self.namespace_selector or self.pod_selector):
            raise ValueError("ipBlock stands alone: no selector with it")
        return self


class Network(_Model):
    """Who may connect to the worker pods: the NetworkPolicy the operator renders for them
    (unless the operator's networkPolicy.enabled setting is false)."""

    allow_from: list[NetworkPeer] | None = None
    """Clients allowed on the HTTP (8000) and gRPC (8001) ports. Unset: every pod of this
    namespace. Always allowed as well: the workload's own pods (a canary's request mirror)
    and the namespaces of the Gateways its canary routes through. Metrics (8002) are open to
    the operator and the monitoring namespaces the operator's settings name."""


class Tls(_Model):
    """TLS on the worker's HTTP and gRPC ports, with a certificate from a Secret."""

    secret_name: str = Field(min_length=1)
    """A kubernetes.io/tls Secret in this namespace (tls.crt, tls.key), as a cert-manager
    Certificate writes one: its names must cover the Service's (NAME.NAMESPACE.svc) for
    clients that verify them. A renewed Secret is served without restarting the pods.
    Metrics stay plain HTTP."""


class InferenceModelSpec(_Model):
    """One model served by polyserve-worker pods on one node pool."""

    model_format: ModelFormat
    """Format of the artifact's files."""
    artifact: Artifact
    """Where the model files come from."""
    hardware: Hardware = Field(default=None)  # type: ignore[assignment]  # filled from tiers
    """Node pool, engine and precision. With tiers, leave it out: the model runs on the
    hardware of its current tier."""
    config: worker_config.ModelConfigSpec | None = None
    """The worker's model configuration (Triton config.pbtxt fields: max_batch_size,
    input, output, dynamic_batching, instance_group, parameters, ...). name, platform and
    backend are filled in from metadata.name and hardware.backend."""
    replicas: int = Field(default=1, ge=0)
    """Worker pods. A PodDisruptionBudget keeps all but one during voluntary disruptions when
    there is more than one."""
    resources: Resources | None = None
    """Requests and limits of the worker container."""
    shm_size: Quantity | None = None
    """Size of the memory-backed /dev/shm (batching and shared-memory clients need more than
    the 64M default); the operator's default when unset."""
    engine_cache: EngineCache | None = None
    """Where engines built at load are kept (backend tensorrt with an ONNX file, or
    onnxruntime in fp16 on gpu); an emptyDir per pod when unset."""
    rollout: Rollout | None = None
    """How new revisions replace old ones."""
    scaling: Scaling | None = None
    """Autoscale replicas between scaling.minReplicas and maxReplicas (replicas is then only
    the starting count)."""
    tuning: Tuning | None = None
    """Measure the best config and one replica's capacity on each hardware profile (a tuning
    Job each); results in status.tuning, the tiers' capacities among them."""
    tiers: list[Tier] | None = Field(default=None, min_length=2)
    """Query tiers, cheapest first: the hardware each level of load needs. The model starts
    on the first and moves between them as its load asks (a move is a canary rollout); with
    tiers, hardware, replicas and resources come from the current tier."""
    tiering: Tiering | None = None
    """When the model moves between its tiers (defaults when unset)."""
    network: Network | None = None
    """Who may connect (a NetworkPolicy); every pod of this namespace when unset."""
    tls: Tls | None = None
    """Serve HTTP and gRPC over TLS (probes use HTTPS); plain text when unset. A canary's
    mirror speaks TLS too (verified with the Secret's ca.crt); not with Gateway API routing,
    which reaches the pods in plain text."""

    @model_validator(mode="before")
    @classmethod
    def _hardware_from_tiers(cls, data: Any) -> Any:
        """Without hardware the model runs on its first tier's: every use of
        ``spec.hardware`` sees a profile (the operator renders the current tier's)."""
        if isinstance(data, dict) and data.get("hardware") is None:
            tiers = data.get("tiers")
            if not tiers:
                raise ValueError("give hardware (or tiers, for a model that moves between them)")
            first = tiers[0]
            hardware = first.get("hardware") if isinstance(first, dict) else first.hardware
            data = {**data, "hardware": hardware}
        return data


class EnsembleStep(_Model):
    """One model call in the graph."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Step name, unique in the ensemble; other steps refer to its outputs as NAME.OUTPUT."""
    model_ref: str = Field(min_length=1)
    """Name of an InferenceModel in the same namespace."""
    inputs: dict[str, str]
    """Model input name -> source: an ensemble input name, or STEP.OUTPUT of another step."""
    outputs: dict[str, str] | None = None
    """Model output name -> ensemble output name, for the outputs the ensemble returns."""


class InferenceEnsembleSpec(_Model):
    """A pipeline of InferenceModels served by one worker Deployment, in-process."""

    inputs: list[worker_config.TensorSpec] = Field(min_length=1)
    """The ensemble's inputs (Triton tensor specs)."""
    outputs: list[worker_config.TensorSpec] = Field(min_length=1)
    """The ensemble's outputs; each is produced by exactly one step's outputs map."""
    steps: list[EnsembleStep] = Field(min_length=1)
    """The model calls; order does not matter, the wiring decides."""
    max_batch_size: int = Field(default=0, ge=0)
    """Largest batch the ensemble takes; 0 means no batch dimension."""
    hardware: Hardware
    """Node pool and engine of the shared worker; every member's backend must run there."""
    replicas: int = Field(default=1, ge=0)
    """Worker pods, each serving every member."""
    resources: Resources | None = None
    """Requests and limits of the worker container."""
    shm_size: Quantity | None = None
    """Size of the memory-backed /dev/shm; the operator's default when unset."""
    network: Network | None = None
    """Who may connect (a NetworkPolicy); every pod of this namespace when unset."""
    rollout: Rollout | None = None
    """How new revisions replace old ones: a change of a member's artifact or config, or of
    the ensemble's own steps, is a new revision. The Canary strategy measures and mirrors
    the ensemble's own requests (what its clients call)."""
    tls: Tls | None = None
    """Serve HTTP and gRPC over TLS (probes use HTTPS); plain text when unset."""


class Metadata(BaseModel):
    """The parts of ObjectMeta the operator reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None


class InferenceModel(BaseModel):
    """A parsed InferenceModel resource."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    metadata: Metadata
    spec: InferenceModelSpec

    kind: Literal["InferenceModel"] = "InferenceModel"


class InferenceEnsemble(BaseModel):
    """A parsed InferenceEnsemble resource."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    metadata: Metadata
    spec: InferenceEnsembleSpec

    kind: Literal["InferenceEnsemble"] = "InferenceEnsemble"


Resource = InferenceModel | InferenceEnsemble


def parse(body: dict[str, Any]) -> Resource:
    """A resource from its JSON body; raises pydantic's ValidationError when invalid."""
    if body.get("kind") == "InferenceEnsemble":
        return InferenceEnsemble.model_validate(body)
    return InferenceModel.model_validate(body)
