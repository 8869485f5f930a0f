"""Rendering: every object valid for Kubernetes, placed on the right pool, wired to the worker."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from polyserve_operator import api, cli, render, settings
from polyserve_operator.render import canaries, workloads
from polyserve_worker import fetching, mirror_config
from polyserve_worker import settings as worker_settings
from tests.sandbox import gateway_schemas

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("[a-z]*.yaml"))
CFG = settings.Settings()


def _docs(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "manifests" / "examples" / name).read_text()))


def _model(name: str = "bert-gpu.yaml", **spec: Any) -> api.InferenceModel:
    (doc,) = _docs(name)
    doc["metadata"]["uid"] = "0b1c2d3e-0000-4000-8000-000000000001"
    doc["spec"].update(spec)
    return api.InferenceModel.model_validate(doc)


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_rendered_object_of_every_example_passes_kubernetes_validate_strict(
    path: Path,
) -> None:
    objects = cli.render_documents(list(yaml.safe_load_all(path.read_text())), CFG)
    assert objects
    for obj in objects:
        for version in ("1.30", "1.33"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_a_gpu_model_asks_for_gpus_on_gpu_nodes_and_tolerates_their_taint() -> None:
    pod = _pod(render.objects(render.model_workload(_model()), CFG))
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-L4",
    }
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"] == CFG.images.worker_gpu


def test_a_bf16_xeon_model_needs_amx_or_avx512_bf16_and_no_gpu() -> None:
    pod = _pod(render.objects(render.model_workload(_model("resnet-xeon.yaml")), CFG))
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = [t["matchExpressions"][0]["key"] for t in terms]
    assert keys == [
        "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
    ]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])
    assert pod["containers"][0]["image"] == CFG.images.worker_cpu


def test_pool_labels_taints_and_images_come_from_settings() -> None:
    cfg = settings.Settings(
        gpu=settings.GpuPool(
            node_selector={"pool": "a100"},
            tolerations=[settings.Toleration(key="dedicated", value="gpu", operator="Equal")],
        ),
        images=settings.Images(worker_gpu="registry.local/worker:gpu"),
    )
    pod = _pod(render.objects(render.model_workload(_model()), cfg))
    assert pod["nodeSelector"] == {"pool": "a100", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]
    assert pod["containers"][0]["image"] == "registry.local/worker:gpu"


def test_settings_are_read_from_polyserve_operator_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLYSERVE_OPERATOR_IMAGES__WORKER_CPU", "example/worker:cpu")
    monkeypatch.setenv("POLYSERVE_OPERATOR_STATUS_INTERVAL_SECONDS", "3")
    cfg = settings.Settings()
    assert cfg.images.worker_cpu == "example/worker:cpu"
    assert cfg.status_interval_seconds == 3


def test_the_worker_is_probed_on_the_oip_health_endpoints() -> None:
    worker = _pod(render.objects(render.model_workload(_model()), CFG))["containers"][0]
    assert worker["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert [p["containerPort"] for p in worker["ports"]] == [8000, 8001, 8002]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_rendered_container_command_line_parses_with_the_workers_own_parser(
    path: Path,
) -> None:
    objects = cli.render_documents(list(yaml.safe_load_all(path.read_text())), CFG)
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        parsed = worker_settings.parse(worker["args"])
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert (parsed.http_port, parsed.grpc_port, parsed.metrics_port) == (
            ports["http"],
            ports["grpc"],
            ports["metrics"],
        )
        mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
        assert str(parsed.model_repository) in mounts
        assert parsed.model_control_mode == "none"
        assert parsed.strict_readiness is True and parsed.exit_on_error is True
        assert parsed.exit_timeout_secs == CFG.worker_exit_timeout_seconds
        grace = pod["terminationGracePeriodSeconds"]
        pre_stop = worker["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop + parsed.exit_timeout_secs < grace
        for init in pod["initContainers"]:
            command, *rest = init["args"]
            if command == "fetch":
                parsed_fetch = fetching._parser().parse_args(rest)
                assert parsed_fetch.dest.parent.parent == parsed.model_repository
            else:
                assert command == "configure"
                source, repository = rest
                assert repository == str(parsed.model_repository)
                config = next(m for m in init["volumeMounts"] if m["mountPath"] == source)
                volume = next(v for v in pod["volumes"] if v["name"] == config["name"])
                config_maps = [o for o in objects if o["kind"] == "ConfigMap"]
                assert volume["configMap"]["name"] in {c["metadata"]["name"] for c in config_maps}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_no_container_mounts_a_volume_inside_a_read_only_mount(path: Path) -> None:
    objects = cli.render_documents(list(yaml.safe_load_all(path.read_text())), CFG)
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["initContainers"] + pod["containers"]:
            mounts = container["volumeMounts"]
            for outer in (m for m in mounts if m.get("readOnly")):
                for inner in mounts:
                    inside = inner["mountPath"].startswith(outer["mountPath"].rstrip("/") + "/")
                    assert not inside, (container["name"], outer, inner)


def test_pods_run_non_root_on_a_read_only_root_with_a_memory_backed_shm() -> None:
    objects = render.objects(render.model_workload(_model(shmSize="4Gi")), CFG)
    pod = _pod(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "/dev/shm" in mounts
    assert mounts["/models"]["readOnly"] is True
    annotations = _by_kind(objects)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8002"


def test_the_init_container_fetches_the_artifact_with_the_secrets_credentials() -> None:
    pod = _pod(render.objects(render.model_workload(_model()), CFG))
    fetch, configure = pod["initContainers"]
    assert fetch["command"] == ["polyserve-worker"]
    assert fetch["args"] == [
        "fetch",
        "gs://models/bert-base/l4-fp16/model.plan",
        "/models/bert-trt/1",
    ]
    assert configure["args"] == ["configure", "/etc/polyserve/config", "/models"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    secret = next(v for v in pod["volumes"] if v["name"] == "secret-model-store")
    assert secret["secret"]["secretName"] == "model-store"


def test_a_pvc_artifact_mounts_the_claim_read_only_for_the_fetcher() -> None:
    im = _model(artifact={"uri": "pvc://models/bert/v3", "digest": "sha256:" + "a" * 64})
    pod = _pod(render.objects(render.model_workload(im), CFG))
    volume = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    fetch, _ = pod["initContainers"]
    assert {"name": volume["name"], "mountPath": "/mnt/pvc/models", "readOnly": True} in fetch[
        "volumeMounts"
    ]
    assert fetch["args"][-1] == "--sha256=" + "a" * 64


def test_a_disruption_budget_exists_only_with_more_than_one_replica() -> None:
    assert "PodDisruptionBudget" not in _by_kind(
        render.objects(render.model_workload(_model(replicas=1)), CFG)
    )
    pdb = _by_kind(render.objects(render.model_workload(_model(replicas=3)), CFG))[
        "PodDisruptionBudget"
    ]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_every_object_is_owned_by_the_resource_so_deleting_it_cleans_up() -> None:
    for obj in render.objects(render.model_workload(_model()), CFG):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "InferenceModel" and owner["controller"] is True


def test_the_config_map_holds_the_workers_config_completed_for_the_hardware() -> None:
    cm = _by_kind(render.objects(render.model_workload(_model()), CFG))["ConfigMap"]
    text = cm["data"]["bert-trt.pbtxt"]
    assert 'name: "bert-trt"' in text
    assert 'platform: "tensorrt_plan"' in text
    assert "kind: KIND_GPU" in text
    assert "max_batch_size: 64" in text


def test_each_revision_has_its_own_immutable_config_map() -> None:
    old = render.objects(render.model_workload(_model()), CFG)
    new = render.objects(
        render.model_workload(_model(config={"max_batch_size": 8, "input": [], "output": []})),
        CFG,
    )
    old_cm, new_cm = _by_kind(old)["ConfigMap"], _by_kind(new)["ConfigMap"]
    assert old_cm["immutable"] is True
    assert old_cm["metadata"]["name"] != new_cm["metadata"]["name"]
    for objects, cm in ((old, old_cm), (new, new_cm)):
        volume = next(v for v in _pod(objects)["volumes"] if v["name"] == "config")
        assert volume["configMap"]["name"] == cm["metadata"]["name"]
        revision = cm["metadata"]["labels"]["polyserve.io/revision"]
        assert cm["metadata"]["name"].endswith(revision)


def test_long_member_names_give_unique_init_container_names_within_the_limit() -> None:
    a, b = "m" * 60 + "-one", "m" * 60 + "-two"
    names = {workloads.dns_label("fetch", a), workloads.dns_label("fetch", b)}
    assert len(names) == 2
    assert all(len(n) <= 63 and not n.endswith("-") for n in names)
    assert workloads.dns_label("fetch", "short") == "fetch-short"


def test_a_new_artifact_is_a_new_revision_and_new_pods() -> None:
    before = workloads.revision(render.model_workload(_model()), CFG)
    after = workloads.revision(
        render.model_workload(_model(artifact={"uri": "gs://models/bert-base/v2/model.plan"})),
        CFG,
    )
    assert before != after
    assert before == workloads.revision(render.model_workload(_model()), CFG)


def test_an_ensemble_wires_members_in_process_with_one_fetcher_per_member() -> None:
    objects = cli.render_documents(_docs("ensemble.yaml"), CFG)
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    ensemble = next(d for d in deployments if d["metadata"]["name"] == "sentiment-pipeline")
    inits = ensemble["spec"]["template"]["spec"]["initContainers"]
    assert [i["name"] for i in inits] == ["fetch-sentiment", "fetch-tokenizer", "configure"]
    cm = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"]["labels"]["app.kubernetes.io/instance"] == "sentiment-pipeline"
    )
    assert set(cm["data"]) == {"sentiment.pbtxt", "tokenizer.pbtxt", "sentiment-pipeline.pbtxt"}
    text = cm["data"]["sentiment-pipeline.pbtxt"]
    assert 'platform: "ensemble"' in text
    assert 'value: "tokenize.ids"' in text
    assert 'value: "PROBABILITIES"' in text


def test_polyserve_render_prints_yaml_that_kubectl_can_apply(tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["render", "-f", str(ROOT / "manifests" / "examples" / "bert-gpu.yaml")])
    assert code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(out.getvalue())]
    assert kinds == ["NetworkPolicy", "ConfigMap", "Deployment", "Service"]
    assert "bert-trt.pbtxt: |" in out.getvalue()


def test_polyserve_render_explains_an_invalid_resource(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (doc,) = _docs("bert-gpu.yaml")
    doc["spec"]["hardware"]["pool"] = "xeon"
    del doc["spec"]["hardware"]["gpu"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["render", "-f", str(path)]) == 1
    assert "need a GPU: set hardware.pool to gpu" in capsys.readouterr().err


def _canary_model(**routing: Any) -> api.InferenceModel:
    (doc,) = _docs("canary-xeon.yaml")
    doc["spec"]["rollout"]["canary"]["trafficRouting"] = {"gatewayAPI": routing}
    return api.InferenceModel.model_validate(doc)


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_a_rendered_route_passes_the_gateway_api_schemas_and_splits_by_weight(kind: str) -> None:
    im = _canary_model(parentRefs=[{"name": "inference", "sectionName": "http"}], routeKind=kind)
    w = render.model_workload(im)
    gateway = canaries.routing(w)
    assert gateway is not None
    route = canaries.route(w, gateway, "5abf1ed6dc", 30)
    gateway_schemas.validate(route)
    (rule,) = route["spec"]["rules"]
    weights = {b["name"]: b["weight"] for b in rule["backendRefs"]}
    assert weights == {"classifier-stable": 70, "classifier-canary-5abf1ed6dc": 30}
    port = 8001 if kind == "GRPCRoute" else 8000
    assert {b["port"] for b in rule["backendRefs"]} == {port}


def test_polyserve_render_shows_a_canarys_steady_state_with_every_weight_on_stable() -> None:
    im = _canary_model(parentRefs=[{"name": "inference"}])
    objects = render.objects(render.model_workload(im), CFG)
    (route,) = [o for o in objects if o["kind"] == "HTTPRoute"]
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"classifier-stable": 100}
    deployment = _by_kind(objects)["Deployment"]
    revision = deployment["spec"]["template"]["metadata"]["labels"]["polyserve.io/revision"]
    assert deployment["metadata"]["name"] == f"classifier-{revision}"
    assert deployment["spec"]["selector"]["matchLabels"]["polyserve.io/revision"] == revision
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert services["classifier"]["spec"]["selector"]["polyserve.io/revision"] == revision
    mirror = next(o for o in objects if o["metadata"]["name"] == "classifier-mirror")
    assert mirror_config.parse(mirror["data"]["mirror.yaml"]).models == {}, "no rollout: off"
