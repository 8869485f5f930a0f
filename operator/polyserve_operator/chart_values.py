"""The Helm chart's values: the single source of ``values.yaml`` and ``values.schema.json``.

``make generate`` writes both into ``helm/polyserve/`` from the models below, so every value
has one description (a comment in ``values.yaml``, a ``description`` in the schema) and a typo
fails ``helm install`` (every object is closed: ``additionalProperties: false``), except the
free-form Kubernetes fields (``resources``, ``affinity``, ...), which the API server checks.

``settings`` is not restated here: it is the operator's own ``Settings`` (camelCase), minus
what the chart derives from its other values or its pod (the watched namespaces, the
webhook and its readiness port, the operator's own namespace, the kubeconfig), so a setting
the operator gains is a value of the chart at the next ``make generate``. ``_settings.tpl``
(also generated) turns each one into its ``POLYSERVE_OPERATOR_*`` variable; unset settings
keep the operator's defaults, which ``values.yaml`` shows as comments.

The schema keeps to JSON Schema draft-07 (no ``$ref``, no ``$defs``), which Helm 3 and
Helm 4 both read. Pure: no I/O.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from polyserve_operator import settings

Obj = dict[str, Any]

#: Settings the chart sets from its other values, so they are not values of their own.
DERIVED_SETTINGS = (
    "webhook",
    "namespaces",
    "operator_namespace",
    "readiness_addr",
    "readiness_port",
    "kubeconfig",
)
#: The settings ``values.yaml`` sets (pinned to the chart's release); the rest stay comments.
PINNED_SETTINGS: Obj = {
    "images": {
        "workerCpu": settings.Images().worker_cpu,
        "workerGpu": settings.Images().worker_gpu,
    },
    "statusIntervalSeconds": int(settings.Settings.model_fields["status_interval_seconds"].default),
}
ENV_PREFIX = "POLYSERVE_OPERATOR_"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class _Values(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )


class Image(_Values):
    """The operator's image (Dockerfile.operator)."""

    repository: str = "ghcr.io/polyserve/operator"
    tag: str = ""
    """Empty: the chart's appVersion."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class PullSecret(_Values):
    name: str
    """A Secret of type kubernetes.io/dockerconfigjson in the release's namespace."""


class Crds(_Values):
    """The InferenceModel and InferenceEnsemble CRDs, generated from the same source as crds/."""

    install: bool = True
    """Install them as templates, so `helm upgrade` updates them too (Helm never upgrades a
    chart's crds/ folder). false: you manage them yourself (`kubectl apply -k crds/`)."""
    keep: bool = True
    """Annotate them helm.sh/resource-policy: keep, so `helm uninstall` leaves them (and so every
    InferenceModel and its pods) in place; delete them yourself to remove everything."""


class Rbac(_Values):
    """The operator's permissions, generated from operator/polyserve_operator/permissions.py."""

    create: bool = True
    """Create the ServiceAccount's least-privilege roles (false: bring your own)."""


class ServiceAccount(_Values):
    """The operator's ServiceAccount."""

    create: bool = True
    """false: use an existing one, named below."""
    name: str = ""
    """Empty: the operator's full name (RELEASE-operator)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """E.g. a cloud identity (eks.amazonaws.com/role-arn); the operator itself needs none."""


class GatewayApi(_Values):
    """Gateway API (gateway.networking.k8s.io) for canary traffic splitting."""

    enabled: bool = True
    """Let the operator create and patch HTTPRoutes and GRPCRoutes (canary rollouts with
    trafficRouting.gatewayAPI). false: without Gateway API such rollouts are refused by RBAC."""


class Keda(_Values):
    """KEDA (keda.sh) for spec.scaling with engine KEDA."""

    enabled: bool = True
    """Let the operator create, read and delete ScaledObjects. false: models with
    scaling.engine KEDA are refused by RBAC."""


class IssuerRef(_Values):
    """A cert-manager Issuer or ClusterIssuer."""

    name: str = ""
    """Empty: a self-signed Issuer the chart creates (RELEASE-selfsigned), as manifests/webhook/
    does; set it to use your own Issuer or ClusterIssuer."""
    kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"
    group: str = "cert-manager.io"


class Webhook(_Values):
    """The validating admission webhook: refuses an invalid spec at `kubectl apply` with the
    operator's own checks (the CRDs' CEL rules catch most without it). The operator keeps the
    ValidatingWebhookConfiguration `polyserve.io` up to date itself."""

    enabled: bool = False
    """Serve it (needs a certificate: below)."""
    port: int = Field(default=9443, ge=1024, le=65535)
    """The operator's webhook port (unprivileged: the operator runs as non-root)."""
    certificates: Literal["certManager", "selfSigned"] = "certManager"
    """certManager: a Certificate from cert-manager (must be installed). selfSigned: a CA and a
    serving certificate the chart generates into a Secret, kept across upgrades (Helm's lookup);
    tools that render without a cluster (Argo CD, `helm template`) make a new one each time."""
    issuer_ref: IssuerRef = Field(default_factory=IssuerRef)
    """cert-manager's issuer of the serving certificate."""
    self_signed_days: int = Field(default=3650, ge=1)
    """Validity of the self-signed CA and certificate, in days."""
    failure_policy: Literal["Ignore", "Fail"] = "Ignore"
    """When the operator cannot answer (a restart): Ignore lets writes through (the CRDs' CEL
    rules still hold and status reports InvalidSpec), Fail blocks every write of our
    resources until it answers again."""


class TestImage(_Values):
    """The test Pod's image."""

    repository: str = "ghcr.io/polyserve/worker"
    tag: str = ""
    """Empty: the chart's appVersion with the -cpu variant (the worker image has Python)."""


def _test_model() -> Obj:
    return {
        "modelFormat": {"name": "onnx"},
        "artifact": {"uri": ""},
        "hardware": {"pool": "xeon", "backend": "onnxruntime"},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "config": {
            "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        },
    }


def _test_request() -> Obj:
    return {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }


class Tests(_Values):
    """`helm test`: an InferenceModel (a test hook, deleted when the test passes) and a Pod that
    waits for it to serve, sends it one inference over HTTP (Open Inference Protocol) and checks
    the answer. Rendered only when model.artifact.uri is set: the cluster must be able to fetch
    the model."""

    enabled: bool = True
    """false: no test, whatever the model."""
    namespace: str = ""
    """Where the test model and Pod run. Empty: the first of watchNamespaces, else the release's
    namespace."""
    image: TestImage = Field(default_factory=TestImage)
    model: Obj = Field(default_factory=_test_model)
    """The test InferenceModel's spec (see `kubectl explain im.spec`); the default serves an
    ONNX model with INPUT0 FP32 [4] -> OUTPUT0 FP32 [4], e.g. one that doubles its input."""
    request: Obj = Field(default_factory=_test_request)
    """The inference request (POST /v2/models/NAME/infer)."""
    expected: dict[str, list[float]] = Field(default_factory=dict)
    """Outputs the answer must hold, by name, e.g. {OUTPUT0: [2, 4, 6, 8]} for a model that
    doubles; empty: any successful answer that has every output of model.config passes."""
    timeout_seconds: int = Field(default=300, ge=1)
    """How long the Pod waits for the model to serve (fetch, load), in seconds."""


class PodMonitors(_Values):
    """PodMonitors for the workers and the operator (deploy/observability/podmonitors.yaml)."""

    enabled: bool = False
    """Install them (needs the Prometheus Operator's CRDs). The workers' looks in
    watchNamespaces (every namespace when empty), the operator's in the release's namespace.
    The workers' NetworkPolicies let only settings.networkPolicy.metricsNamespaces scrape them:
    put Prometheus' namespace there."""


class PrometheusRule(_Values):
    """Polyserve's alerts (deploy/observability/alerts.yaml) as a PrometheusRule."""

    enabled: bool = False
    """Install it (needs the Prometheus Operator's CRDs; its expressions read the labels the
    PodMonitors give, so enable those too or scrape the same way)."""


class Dashboard(_Values):
    """The Grafana dashboard (deploy/observability/dashboard.json) as a ConfigMap that Grafana's
    dashboard sidecar loads (kube-prometheus-stack's does)."""

    enabled: bool = False
    """Install the ConfigMap."""
    label_key: str = Field(default="grafana_dashboard", min_length=1)
    """The label the sidecar looks for (its sidecar.dashboards.label)."""
    label_value: str = "1"
    """That label's value (its sidecar.dashboards.labelValue)."""
    namespace: str = Field(default="", pattern=f"^$|{DNS_LABEL}")
    """Where the ConfigMap goes. Empty: the release's namespace; the sidecar reads only
    Grafana's namespace unless its searchNamespace says otherwise."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """E.g. {grafana_folder: Polyserve} where the sidecar's folderAnnotation is grafana_folder."""


class Monitoring(_Values):
    """Prometheus Operator objects and the Grafana dashboard of deploy/observability, each off by
    default: the chart renders the files themselves (copied into files/observability/ by `make
    generate`), with its names, namespace and labels."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Labels added to each of them, e.g. {release: prometheus}: what a kube-prometheus-stack's
    Prometheus selects PodMonitors and PrometheusRules by (its release name) by default."""
    pod_monitors: PodMonitors = Field(default_factory=PodMonitors)
    prometheus_rule: PrometheusRule = Field(default_factory=PrometheusRule)
    dashboard: Dashboard = Field(default_factory=Dashboard)


class Values(_Values):
    """The chart's values."""

    image: Image = Field(default_factory=Image)
    image_pull_secrets: list[PullSecret] = Field(default_factory=list)
    """Secrets to pull the operator's image with, e.g. [{name: regcred}]."""
    fullname_override: str = ""
    """Replaces the release name as the prefix of every object's name."""
    crds: Crds = Field(default_factory=Crds)
    rbac: Rbac = Field(default_factory=Rbac)
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    watch_namespaces: list[str] = Field(default_factory=list)
    """Empty: the operator watches every namespace (ClusterRoles). Else only these: a Role and
    RoleBinding in each (they must exist) and a read-only ClusterRole for kopf's discovery of
    CRDs and namespaces; the operator runs with POLYSERVE_OPERATOR_NAMESPACES set to them."""
    gateway_api: GatewayApi = Field(default_factory=GatewayApi, alias="gatewayAPI")
    keda: Keda = Field(default_factory=Keda)
    settings: Obj = Field(default_factory=lambda: json.loads(json.dumps(PINNED_SETTINGS)))
    """The operator's settings (POLYSERVE_OPERATOR_*, nested groups joined with __), camelCase.
    Unset ones keep the operator's defaults, shown here as comments."""
    webhook: Webhook = Field(default_factory=Webhook)
    verbose: bool = False
    """Debug logging (--verbose)."""
    extra_env: list[Obj] = Field(default_factory=list)
    """More environment variables of the operator's container (e.g. HTTPS_PROXY)."""
    resources: Obj = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    """The operator's container resources."""
    pod_security_context: Obj = Field(
        default_factory=lambda: {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    """The operator pod's securityContext (restricted Pod Security Standard)."""
    security_context: Obj = Field(
        default_factory=lambda: {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
    )
    """The operator container's securityContext."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Where the operator itself runs (not the workers: settings.gpu and settings.xeon)."""
    tolerations: list[Obj] = Field(default_factory=list)
    """The operator pod's tolerations."""
    affinity: Obj = Field(default_factory=dict)
    """The operator pod's affinity."""
    priority_class_name: str = ""
    """The operator pod's priorityClassName (e.g. system-cluster-critical); empty: none."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations of the operator's pod."""
    pod_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels of the operator's pod (never in its selector)."""
    monitoring: Monitoring = Field(default_factory=Monitoring)
    tests: Tests = Field(default_factory=Tests)


# ---- the settings, from the operator's own model -----------------------------------------


def _inline(node: Any, defs: Obj) -> Any:
    """``$ref`` replaced by its definition, everywhere."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}


def _tidy(node: Any, *, camel: bool) -> Any:
    """No titles or defaults (values.yaml shows those), property names in camelCase."""
    if isinstance(node, list):
        return [_tidy(item, camel=camel) for item in node]
    if not isinstance(node, dict):
        return node
    out: Obj = {}
    for key, value in node.items():
        if key in ("title", "default"):
            continue
        if key == "properties":
            out[key] = {
                (to_camel(name) if camel else name): _tidy(sub, camel=camel)
                for name, sub in value.items()
            }
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = _tidy(value, camel=camel)
    return out


def _nullable(node: Obj) -> Obj:
    """The same schema, also accepting null (unset: the operator's default)."""
    if "anyOf" in node:
        if {"type": "null"} in node["anyOf"]:
            return node
        return {**node, "anyOf": [*node["anyOf"], {"type": "null"}]}
    kind = node.get("type")
    if isinstance(kind, str):
        return {**node, "type": [kind, "null"]}
    return node


def settings_schema() -> Obj:
    """The schema of ``values.settings``: ``Settings`` in camelCase, every field optional."""
    raw = settings.Settings.model_json_schema()
    defs = raw.pop("$defs", {})
    schema: Obj = _tidy(_inline(raw, defs), camel=True)
    props = {
        to_camel(name): sub
        for name, sub in schema["properties"].items()
        if name not in DERIVED_SETTINGS
    }
    for key in DERIVED_SETTINGS:
        props.pop(to_camel(key), None)
    out: Obj = {}
    for name, sub in props.items():
        if "properties" in sub:  # a group: its fields nullable too
            sub = {**sub, "properties": {k: _nullable(v) for k, v in sub["properties"].items()}}
        out[name] = _nullable(sub)
    return {
        "type": "object",
        "description": Values.model_fields["settings"].description,
        "additionalProperties": False,
        "properties": out,
    }


class Setting(NamedTuple):
    """One setting as a value of the chart and as the operator reads it."""

    path: tuple[str, ...]
    """Where it is under ``values.settings`` (camelCase)."""
    fields: tuple[str, ...]
    """The same in ``Settings`` field names."""
    variable: str
    """Its environment variable."""


def settings_env() -> list[Setting]:
    """Every setting the chart passes on, in the operator's field order: nested groups joined
    with ``__`` as pydantic-settings reads them."""
    found: list[Setting] = []

    def walk(model: type[BaseModel], fields: tuple[str, ...], env: str) -> None:
        for name, field in model.model_fields.items():
            if not fields and name in DERIVED_SETTINGS:
                continue
            kind = field.annotation
            here = (*fields, name)
            variable = f"{env}{name.upper()}"
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(kind, here, variable + "__")
            else:
                found.append(Setting(tuple(to_camel(f) for f in here), here, variable))

    walk(settings.Settings, (), ENV_PREFIX)
    return found


# ---- the chart's schema --------------------------------------------------------------------


def schema() -> Obj:
    """``values.schema.json``."""
    raw = Values.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    body: Obj = _tidy(_inline(raw, defs), camel=False)
    namespaces = body["properties"]["watchNamespaces"]
    namespaces["items"] = {"type": "string", "pattern": DNS_LABEL}
    body["properties"]["settings"] = settings_schema()
    return {"$schema": "http://json-schema.org/draft-07/schema#", **body}


# ---- values.yaml ---------------------------------------------------------------------------

WIDTH = 96


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    words = " ".join(text.split())
    return [f"{indent}# {line}" for line in textwrap.wrap(words, WIDTH - len(indent) - 2)]


def _scalar(value: Any) -> str:
    """One value on one line, in YAML's flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _mapping(value: Obj, indent: str) -> list[str]:
    return [line for key, item in value.items() for line in _block(key, item, indent)]


def _block(key: str, value: Any, indent: str) -> list[str]:
    """``key: value`` as kubectl writes manifests: mappings in block style, a list of
    mappings as ``- `` items at the key's indentation, any other list in flow style."""
    if isinstance(value, dict) and value:
        return [f"{indent}{key}:", *_mapping(value, indent + "  ")]
    if isinstance(value, list) and any(isinstance(i, dict) and i for i in value):
        lines = [f"{indent}{key}:"]
        for item in value:
            if isinstance(item, dict) and item:
                sub = _mapping(item, indent + "  ")
                sub[0] = f"{indent}- {sub[0][len(indent) + 2 :]}"
                lines += sub
            else:
                lines.append(f"{indent}- {_scalar(item)}")
        return lines
    return [f"{indent}{key}: {_scalar(value)}"]


def _model_lines(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        value = getattr(model, name)
        doc = field.description
        if isinstance(value, BaseModel):
            doc = doc or type(value).__doc__
            lines += _comment(doc, indent)
            lines.append(f"{indent}{key}:")
            lines += _model_lines(value, indent + "  ")
        elif key == "settings":
            lines += _comment(doc, indent)
            lines.append(f"{indent}{key}:")
            lines += _settings_lines(settings.Settings, value, indent + "  ", top=True)
        else:
            lines += _comment(doc, indent)
            lines += _block(key, value, indent)
    return lines


def _default(field: Any) -> Any:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list):
        return [
            v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
            for v in value
        ]
    return value


def _settings_lines(model: type[BaseModel], pinned: Obj, indent: str, *, top: bool) -> list[str]:
    """A group of settings: the pinned ones set, the others commented with their default."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        if top and name in DERIVED_SETTINGS:
            continue
        key = to_camel(name)
        kind = field.annotation
        doc = field.description
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            lines += _comment(doc or kind.__doc__, indent)
            lines.append(f"{indent}{key}:")
            lines += _settings_lines(kind, pinned.get(key) or {}, indent + "  ", top=False)
            continue
        lines += _comment(doc, indent)
        if key in pinned:
            lines += _block(key, pinned[key], indent)
        else:
            default = _default(field)
            shown = "null" if default is None else _scalar(default)
            lines.append(f"{indent}# {key}: {shown}")
    return lines


def values_yaml() -> str:
    """``values.yaml``, every value with its description as a comment."""
    header = [
        "# Generated by `make generate` from operator/polyserve_operator/chart_values.py.",
        "# Do not edit: change the models there. values.schema.json holds the same descriptions.",
        "",
    ]
    return "\n".join([*header, *_model_lines(Values(), "")]) + "\n"
