"""The custom resources, ``polyserve.io/v1alpha1``: the single source of ``crds/``.

Field docstrings become the CRD descriptions, so ``kubectl explain im.spec`` teaches the API.
The worker's model configuration (``polyserve_worker.worker_config.ModelConfigSpec``) is embedded
as-is: it is the contract with the worker, in Triton's field names, imported, never copied.
This module knows nothing of kopf or the Kubernetes client.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel

from polyserve_worker import config as worker_config

GROUP = "polyserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Pool = Literal["xeon", "gpu"]
Backend = Literal["onnxruntime", "openvino", "tensorrt", "onnxruntime-cuda", "pytorch-cuda"]

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
    """File format: onnx (model.onnx), openvino (model.xml + .bin), tensorrt (model.plan),
    pytorch (model.pt, TorchScript), tensorflow (SavedModel)."""
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
    """Node pool: xeon (CPU nodes; OpenVINO or ONNX Runtime) or gpu (NVIDIA nodes; TensorRT,
    ONNX Runtime CUDA or PyTorch CUDA)."""
    backend: Backend
    """Inference engine: onnxruntime and openvino need pool xeon; tensorrt, onnxruntime-cuda
    and pytorch-cuda need pool gpu."""
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


class Rollout(_Model):
    """How a new revision replaces the old one. Canary steps arrive in a later version: this
    object will grow fields, none of these will change."""

    strategy: Literal["RollingUpdate"] = "RollingUpdate"
    """RollingUpdate replaces pods gradually; Canary is reserved for the next version."""
    max_surge: IntOrPercent | None = None
    """Extra pods during a rollout (Deployment maxSurge); 0 when GPUs are scarce."""
    max_unavailable: IntOrPercent | None = None
    """Pods that may be missing during a rollout (Deployment maxUnavailable)."""


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
    endpoints: Endpoints | None = None
    """Where clients connect."""
    last_failure: Failure | None = None
    """The most recent failure, kept until the resource is Ready again."""


class InferenceModelSpec(_Model):
    """One model served by polyserve-worker pods on one node pool."""

    model_format: ModelFormat
    """Format of the artifact's files."""
    artifact: Artifact
    """Where the model files come from."""
    hardware: Hardware
    """Node pool, engine and precision."""
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
    rollout: Rollout | None = None
    """How new revisions replace old ones."""


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
