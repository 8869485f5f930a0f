"""spec.tls: the worker pods serve HTTP and gRPC over TLS with the certificate of a Secret,
passed through the worker's own flags, and are probed over HTTPS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from polyserve_operator import api, render, settings, validating
from polyserve_operator.render import canaries, workloads
from polyserve_worker import mirror_config
from polyserve_worker import settings as worker_settings
from tests.install import pod_security

ROOT = Path(__file__).resolve().parents[2]
CFG = settings.Settings()
TLS = {"secretName": "classifier-tls"}


def _doc(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / name).read_text())]
    for doc in docs:
        doc["metadata"]["uid"] = "0b1c2d3e-0000-4000-8000-000000000001"
    found: dict[str, Any] = docs[-1]
    return found


def _model(**spec: Any) -> api.InferenceModel:
    doc = _doc("resnet-xeon.yaml")
    doc["spec"].update(spec)
    return api.InferenceModel.model_validate(doc)


def _objects(im: api.InferenceModel) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render.objects(render.model_workload(im), CFG)}


def test_the_secret_is_mounted_and_the_worker_parses_its_files_from_the_rendered_args() -> None:
    objects = _objects(_model(tls=TLS))
    for obj in objects.values():
        kubernetes_validate.validate(obj, "1.33", strict=True)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    parsed = worker_settings.parse(worker["args"])
    assert parsed.tls and parsed.tls_client_ca_file is None
    assert parsed.grpc_transport in ("auto", "aio"), "auto picks grpc.aio, which serves TLS"
    mounts = {m["name"]: m for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    folder = Path(mounts["tls"]["mountPath"])
    assert (parsed.tls_cert_file, parsed.tls_key_file) == (folder / "tls.crt", folder / "tls.key")
    assert volumes["tls"]["secret"]["secretName"] == "classifier-tls"
    assert "items" not in volumes["tls"]["secret"], "whole, so renewals reach the pod"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"]["scheme"] == "HTTPS"
    assert pod_security.violations(pod) == [], "a Secret volume is allowed by restricted"


def test_status_and_the_service_say_tls_and_plain_models_are_unchanged() -> None:
    tls = _objects(_model(tls=TLS))["Service"]["spec"]["ports"]
    plain = _objects(_model())["Service"]["spec"]["ports"]
    assert [p.get("appProtocol") for p in tls] == [None, None, None]
    assert [p.get("appProtocol") for p in plain] == [None, "kubernetes.io/h2c", None]
    assert workloads.endpoints(render.model_workload(_model(tls=TLS))).http.startswith("https://")
    pod = _objects(_model())["Deployment"]["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert "scheme" not in worker["readinessProbe"]["httpGet"]
    assert not worker_settings.parse(worker["args"]).tls
    assert "tls" not in {v["name"] for v in pod["volumes"]}


def test_an_ensemble_serves_tls_the_same_way() -> None:
    tokenizer, sentiment, ensemble = yaml.safe_load_all(
        (ROOT / "manifests" / "examples" / "ensemble.yaml").read_text()
    )
    ensemble["spec"]["tls"] = TLS
    members = {
        m["metadata"]["name"]: api.InferenceModel.model_validate(m) for m in (tokenizer, sentiment)
    }
    w = render.ensemble_workload(api.InferenceEnsemble.model_validate(ensemble), members)
    (deployment,) = [o for o in render.objects(w, CFG) if o["kind"] == "Deployment"]
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert worker_settings.parse(worker["args"]).tls


def test_tls_with_a_mirror_mirrors_over_tls_and_gateway_routing_is_refused() -> None:
    doc = _doc("canary-xeon.yaml")
    doc["spec"]["tls"] = TLS
    mirrored = api.InferenceModel.model_validate(doc)
    assert mirrored.spec.rollout and mirrored.spec.rollout.canary
    assert mirrored.spec.rollout.canary.mirror is not None, "the example mirrors"
    assert validating.model(mirrored) == []
    w = render.model_workload(mirrored)
    rendered = canaries.mirror_config(
        w, mirrored.spec.rollout.canary.mirror, "10.96.0.9:8001", "5abf1ed6dc"
    )
    config = mirror_config.parse(rendered["data"][workloads.MIRROR_KEY])
    tls = config.models["classifier"].tls
    assert tls is not None
    assert tls.server_name == "classifier.polyserve-demo.svc"
    assert tls.ca_file is None, "the worker's own: the ca.crt beside its certificate"
    canary = doc["spec"]["rollout"]["canary"]
    canary["trafficRouting"] = {"gatewayAPI": {"parentRefs": [{"name": "inference"}]}}
    problems = validating.model(api.InferenceModel.model_validate(doc))
    assert any("Gateway API routes reach the pods in plain text" in p for p in problems)
