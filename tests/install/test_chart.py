"""The Helm chart (helm/polyserve) with a real helm v4: lint, every documented combination of
values rendered and validated, the same objects as `kubectl kustomize manifests/` where the
two installs overlap, and a schema that refuses typos."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from polyserve_operator import chart_values, crds, generate, permissions, settings
from tests import crd_schemas, helm_support
from tests.install import rendering

Obj = dict[str, Any]

#: Every documented combination: each value of values.yaml that changes what is rendered.
COMBINATIONS: dict[str, Obj] = {
    "defaults": {},
    "webhook-cert-manager": {"webhook": {"enabled": True}},
    "webhook-cluster-issuer": {
        "webhook": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
    },
    "webhook-self-signed": {"webhook": {"enabled": True, "certificates": "selfSigned"}},
    "namespace-scoped": {"watchNamespaces": ["team-a", "team-b"]},
    "namespace-scoped-webhook": {"watchNamespaces": ["team-a"], "webhook": {"enabled": True}},
    "crds-managed-elsewhere": {"crds": {"install": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "bring-your-own-rbac": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "ops"},
    },
    "no-gateway-api": {"gatewayAPI": {"enabled": False}},
    "helm-test": {"tests": {"model": {"artifact": {"uri": "s3://models/double/model.onnx"}}}},
    "helm-test-elsewhere": {
        "watchNamespaces": ["team-a"],
        "tests": {
            "namespace": "smoke",
            "model": {"artifact": {"uri": "https://models.example/double.onnx"}},
            "expected": {"OUTPUT0": [2, 4, 6, 8]},
        },
    },
    "placement-and-pod": {
        "fullnameOverride": "serving",
        "image": {"repository": "registry.example/polyserve-operator", "tag": "0.1.0-rc1"},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "pool", "operator": "In", "values": ["system"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "verbose": True,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    },
    "every-setting": {
        "settings": {
            "gpu": {
                "nodeSelector": {"accelerator": "nvidia"},
                "productLabel": "nvidia.com/gpu.product",
                "resource": "nvidia.com/gpu",
                "tolerations": [
                    {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
                ],
            },
            "xeon": {
                "nodeSelector": {"pool": "xeon"},
                "bf16Labels": ["feature.node.kubernetes.io/cpu-cpuid.AMXBF16"],
                "tolerations": [{"key": "xeon", "effect": "NoSchedule"}],
            },
            "images": {
                "workerCpu": "r.example/w:1-cpu",
                "workerGpu": "r.example/w:1-gpu",
                "pullPolicy": "Always",
            },
            "prometheus": {
                "url": "http://prometheus.monitoring:9090",
                "namespaceLabel": "kubernetes_namespace",
                "podLabel": "kubernetes_pod_name",
                "timeoutSeconds": 2.5,
            },
            "fieldManager": "polyserve",
            "annotationPrefix": "serving.example.com",
            "statusIntervalSeconds": 30,
            "defaultShmSize": "2Gi",
            "preStopSeconds": 10,
            "workerExitTimeoutSeconds": 60,
            "terminationGraceSeconds": 90,
        }
    },
}


def _deep_merge(base: Obj, extra: Obj) -> Obj:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: rendering.helm(values) for name, values in COMBINATIONS.items()}


def _crd_schema(kind: str) -> Obj:
    for document in crds.definitions().values():
        if document["spec"]["names"]["kind"] == kind:
            schema: Obj = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(kind)


def _container(objects: list[Obj]) -> Obj:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(objects: list[Obj]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(objects).get("env") or [] if "value" in e}


def test_helm_lint_strict_passes_with_the_defaults_and_every_combination(tmp_path: Any) -> None:
    for name, values in COMBINATIONS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        done = helm_support.run(
            ["lint", "--strict", str(rendering.CHART), "--values", str(path)], check=False
        )
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_rendered_object_is_valid_against_its_own_schema(
    rendered: dict[str, list[Obj]], combination: str
) -> None:
    """Built-in kinds with kubernetes-validate --strict (the chart's oldest Kubernetes and a
    recent one), the test model against the generated CRD, cert-manager's with its own."""
    others = []
    for obj in rendered[combination]:
        if obj["apiVersion"] == "polyserve.io/v1alpha1":
            jsonschema.validate(obj, _crd_schema(obj["kind"]))
        elif crd_schemas.known(obj):
            others.append(obj)
        else:
            for version in ("1.25", "1.33"):
                kubernetes_validate.validate(obj, version, strict=True)
    if others:
        crd_schemas.validate(*others)


def _normalized(obj: Obj) -> Obj:
    """What both installs must agree on: Helm's own labels and the CRDs' keep policy left
    out, and the lists kustomize's strategic merge orders its own way (a patch's items first;
    none holds a $(VAR) reference, so the order means nothing) sorted by name."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    labels = {
        k: v
        for k, v in (meta.get("labels") or {}).items()
        if k
        not in (
            "helm.sh/chart",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
        )
    }
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != "helm.sh/resource-policy"
    }
    for field, value in (("labels", labels), ("annotations", annotations)):
        if value:
            meta[field] = value
        else:
            meta.pop(field, None)
    if out["kind"] == "Deployment":
        pod = out["spec"]["template"]["spec"]
        pod["volumes"] = sorted(pod.get("volumes") or [], key=lambda v: v["name"])
        for container in pod["containers"]:
            for field in ("env", "ports", "volumeMounts"):
                container[field] = sorted(container.get(field) or [], key=lambda i: i["name"])
    return out


@pytest.mark.parametrize(
    ("folder", "values"),
    [("manifests", {}), ("manifests/webhook", {"webhook": {"enabled": True}})],
    ids=["base", "webhook"],
)
def test_the_chart_renders_what_kustomize_installs_where_they_overlap(
    folder: str, values: Obj
) -> None:
    kustomized = rendering.by_key(rendering.kustomize(rendering.ROOT / folder))
    charted = rendering.by_key(rendering.helm(values))
    overlap = [k for k in kustomized if k[0] != "Namespace"]  # the chart's is --create-namespace
    assert set(overlap) == set(charted), "the installs differ in the objects they hold"
    for key in overlap:
        assert _normalized(charted[key]) == _normalized(kustomized[key]), key


def test_the_crds_are_templates_so_helm_upgrade_updates_them_and_uninstall_keeps_them(
    rendered: dict[str, list[Obj]],
) -> None:
    for document in crds.definitions().values():
        (found,) = [
            o
            for o in rendered["defaults"]
            if o["kind"] == "CustomResourceDefinition"
            and o["metadata"]["name"] == document["metadata"]["name"]
        ]
        assert found["spec"] == document["spec"]
        assert found["metadata"]["annotations"] == {
            "helm.sh/resource-policy": "keep",
            **generate.KEEP,
        }
    assert not (rendering.CHART / "crds").exists(), "Helm never upgrades a chart's crds/ folder"
    kinds = {o["kind"] for o in rendered["crds-managed-elsewhere"]}
    assert "CustomResourceDefinition" not in kinds
    for obj in rendered["crds-not-kept"]:
        assert "helm.sh/resource-policy" not in (obj["metadata"].get("annotations") or {})


def test_cluster_wide_rbac_is_one_cluster_role_with_the_tables_rules(
    rendered: dict[str, list[Obj]],
) -> None:
    roles = [o for o in rendered["defaults"] if o["kind"] in ("ClusterRole", "Role")]
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    expected = [r.policy() for r in (*permissions.NAMESPACED, *permissions.CLUSTER)]
    assert roles[0]["rules"] == expected
    assert "POLYSERVE_OPERATOR_NAMESPACES" not in _env(rendered["defaults"])


def test_namespace_scoped_rbac_is_a_role_per_namespace_and_read_only_discovery(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["namespace-scoped"]
    roles = {
        (o["kind"], o["metadata"].get("namespace")): o
        for o in objects
        if o["kind"].endswith("Role")
    }
    assert set(roles) == {("ClusterRole", None), ("Role", "team-a"), ("Role", "team-b")}
    assert roles["ClusterRole", None]["rules"] == [r.policy() for r in permissions.CLUSTER]
    assert all(verb in ("get", "list", "watch") for r in permissions.CLUSTER for verb in r.verbs)
    for namespace in ("team-a", "team-b"):
        assert roles["Role", namespace]["rules"] == [r.policy() for r in permissions.NAMESPACED]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": "polyserve-operator",
                "namespace": rendering.NAMESPACE,
            }
        ]
    assert _env(objects)["POLYSERVE_OPERATOR_NAMESPACES"] == '["team-a","team-b"]'


def test_the_operator_is_told_to_watch_exactly_the_namespaces_its_roles_cover(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env(rendered["namespace-scoped"]).items():
        monkeypatch.setenv(name, value)
    roles = {
        o["metadata"]["namespace"] for o in rendered["namespace-scoped"] if o["kind"] == "Role"
    }
    assert set(settings.Settings().namespaces) == roles


def test_gateway_api_rules_follow_their_value(rendered: dict[str, list[Obj]]) -> None:
    def groups(objects: list[Obj]) -> set[str]:
        return {
            g
            for o in objects
            if o["kind"] == "ClusterRole"
            for r in o["rules"]
            for g in r["apiGroups"]
        }

    assert "gateway.networking.k8s.io" in groups(rendered["defaults"])
    assert "gateway.networking.k8s.io" not in groups(rendered["no-gateway-api"])


def test_bring_your_own_rbac_renders_no_roles_and_runs_as_the_named_account(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["bring-your-own-rbac"]
    assert not [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "Role")]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_every_setting_in_values_reaches_the_operator_as_the_operator_reads_it(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated env table, rendered by helm and parsed by the operator's own Settings,
    gives back each value as given."""
    given = COMBINATIONS["every-setting"]["settings"]
    for name, value in _env(rendered["every-setting"]).items():
        monkeypatch.setenv(name, value)
    parsed = settings.Settings().model_dump(mode="json", exclude_none=True)
    for path, fields, variable in chart_values.settings_env():
        want: Any = given
        for part in path:
            want = want.get(part) if isinstance(want, dict) else None
        if want is None:
            continue
        got: Any = parsed
        for name in fields:
            got = got[name]
        if isinstance(want, list) and want and isinstance(want[0], dict):
            got = [{k: v for k, v in item.items() if v is not None} for item in got]
            want = [{"operator": "Exists", **item} for item in want]
        assert got == want, (variable, got, want)


def test_unset_settings_keep_the_operators_defaults(rendered: dict[str, list[Obj]]) -> None:
    env = _env(rendered["defaults"])
    assert sorted(env) == [
        "POLYSERVE_OPERATOR_IMAGES__WORKER_CPU",
        "POLYSERVE_OPERATOR_IMAGES__WORKER_GPU",
        "POLYSERVE_OPERATOR_STATUS_INTERVAL_SECONDS",
    ]


def test_the_webhook_is_configured_from_the_certificates_secret(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for combination in ("webhook-cert-manager", "webhook-self-signed", "webhook-cluster-issuer"):
        objects = rendered[combination]
        env = _env(objects)
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            cfg = settings.Settings()
        assert cfg.webhook.enabled and cfg.webhook.host == "polyserve-operator.polyserve-system.svc"
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"name": "webhook-tls", "secret": {"secretName": "polyserve-webhook-tls"}} in volumes
        (service,) = [o for o in objects if o["kind"] == "Service"]
        assert service["spec"]["ports"][0]["port"] == cfg.webhook.port
    (certificate,) = [o for o in rendered["webhook-cluster-issuer"] if o["kind"] == "Certificate"]
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert not [o for o in rendered["webhook-cluster-issuer"] if o["kind"] == "Issuer"]
    (secret,) = [o for o in rendered["webhook-self-signed"] if o["kind"] == "Secret"]
    assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    assert not [o for o in rendered["webhook-self-signed"] if o["kind"] == "Certificate"]


def test_the_operator_pod_takes_its_placement_and_pod_values(
    rendered: dict[str, list[Obj]],
) -> None:
    values = COMBINATIONS["placement-and-pod"]
    objects = rendered["placement-and-pod"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["metadata"]["name"] == "serving-operator"
    pod = deployment["spec"]["template"]
    for field in (
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "imagePullSecrets",
    ):
        assert pod["spec"][field] == values[field], field
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "serving-operator"
    }
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/polyserve-operator:0.1.0-rc1"
    assert container["resources"] == values["resources"]
    assert "--verbose" in container["args"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]


def test_helm_test_is_rendered_only_with_a_model_the_cluster_can_fetch(
    rendered: dict[str, list[Obj]],
) -> None:
    assert not [o for o in rendered["defaults"] if o["kind"] in ("Pod", "InferenceModel")]
    objects = rendered["helm-test"]
    hooks = {
        o["kind"] + "/" + o["metadata"]["name"]: o
        for o in objects
        if o["kind"] in ("Pod", "InferenceModel")
    }
    assert sorted(hooks) == [
        "InferenceModel/polyserve-test",
        "Pod/polyserve-test-inference",
        "Pod/polyserve-test-wait",
    ]
    for obj in hooks.values():
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert obj["metadata"]["namespace"] == rendering.NAMESPACE
    weights = [
        int(hooks[k]["metadata"]["annotations"]["helm.sh/hook-weight"]) for k in sorted(hooks)
    ]
    assert weights == [-10, 0, -5]  # the model, then the wait, then the inference
    inference = hooks["Pod/polyserve-test-inference"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in inference["env"]}
    assert env["MODEL"] == "polyserve-test" and env["OUTPUTS"] == '["OUTPUT0"]'
    elsewhere = [
        o for o in rendered["helm-test-elsewhere"] if o["kind"] in ("Pod", "InferenceModel")
    ]
    assert {o["metadata"]["namespace"] for o in elsewhere} == {"smoke"}


def test_the_test_scripts_are_valid_python() -> None:
    for path in sorted((rendering.CHART / "files").glob("*.py")):
        compile(path.read_text(), str(path), "exec")


TYPOS: dict[str, Obj] = {
    "a top-level value": {"watchNamespace": ["a"]},
    "a value of a group": {"webhook": {"enable": True}},
    "an operator setting": {"settings": {"statusIntervalSecond": 5}},
    "a setting of a group": {"settings": {"gpu": {"nodeSelectors": {"a": "b"}}}},
    "a wrong type": {"settings": {"statusIntervalSeconds": "soon"}},
    "an unknown choice": {"webhook": {"certificates": "letsencrypt"}},
    "a namespace that is no DNS label": {"watchNamespaces": ["Team_A"]},
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_typo_in_values_fails_helm_install(typo: str) -> None:
    """`helm install --dry-run` checks values.schema.json first, as `helm install` does."""
    error = rendering.helm_fails(
        TYPOS[typo],
        "install",
        rendering.RELEASE,
        str(rendering.CHART),
        "--namespace",
        rendering.NAMESPACE,
        "--dry-run=client",
    )
    assert "values don't meet the specifications of the schema" in error, error


def test_the_defaults_and_every_combination_meet_the_schema() -> None:
    schema = chart_values.schema()
    defaults = yaml.safe_load((rendering.CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for values in COMBINATIONS.values():
        jsonschema.Draft7Validator(schema).validate(_deep_merge(defaults, values))


def test_the_operators_metrics_port_is_declared_as_its_podmonitor_expects(
    rendered: dict[str, list[Obj]],
) -> None:
    """deploy/observability's PodMonitor scrapes the container port named metrics."""
    ports = {p["name"]: p["containerPort"] for p in _container(rendered["defaults"])["ports"]}
    assert ports["metrics"] == settings.Settings.model_fields["metrics_port"].default
    moved = rendering.helm({"settings": {"metricsPort": 9400}})
    assert {"name": "metrics", "containerPort": 9400} in _container(moved)["ports"]
    anywhere = rendering.helm({"settings": {"metricsPort": 0}})
    assert "metrics" not in {p["name"] for p in _container(anywhere)["ports"]}
