"""Pod Security Admission ``restricted``: the namespaces we ship enforce it, and every pod we
ship or render passes it: the worker pods of every example (and of a canary, a tiered model
and an ensemble), the operator's Deployment in both installs, and the chart's test Pods."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from polyserve_operator import cli, settings
from tests.install import pod_security, rendering

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("[a-z]*.yaml"))
ENFORCE = "pod-security.kubernetes.io/enforce"
CHART_VALUES: dict[str, Obj] = {
    "defaults": {},
    "webhook": {"webhook": {"enabled": True}},
    "namespace-scoped": {"watchNamespaces": ["team-a"]},
    "helm-test": {"tests": {"model": {"artifact": {"uri": "s3://models/double/model.onnx"}}}},
}


def _documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _assert_restricted(objects: list[Obj]) -> int:
    checked = 0
    for name, spec, pod_annotations in pod_security.templates(objects):
        assert pod_security.violations(spec, pod_annotations) == [], name
        checked += 1
    return checked


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_rendered_worker_pod_of_every_example_passes_restricted(path: Path) -> None:
    objects = cli.render_documents(_documents(path), settings.Settings())
    assert _assert_restricted(objects) >= 1


def test_worker_pods_with_a_claim_and_a_secret_pass_restricted() -> None:
    (doc,) = _documents(ROOT / "manifests" / "examples" / "bert-gpu.yaml")
    doc["spec"]["artifact"]["uri"] = "pvc://models/bert/v3"
    doc["spec"]["engineCache"] = {"claimName": "engines"}
    objects = cli.render_documents([doc], settings.Settings())
    volumes = {
        key
        for _, spec, _ in pod_security.templates(objects)
        for volume in spec["volumes"]
        for key in volume
    }
    assert {"persistentVolumeClaim", "secret", "emptyDir", "configMap"} <= volumes
    assert _assert_restricted(objects) == 1


def test_the_namespaces_we_ship_enforce_restricted() -> None:
    shipped = [
        ROOT / "manifests" / "base" / "namespace.yaml",
        ROOT / "manifests" / "examples" / "00-namespace.yaml",
    ]
    namespaces = [d for path in shipped for d in _documents(path) if d["kind"] == "Namespace"]
    assert len(namespaces) == 2
    for namespace in namespaces:
        labels = namespace["metadata"]["labels"]
        assert labels[ENFORCE] == "restricted", namespace["metadata"]["name"]
        assert labels["pod-security.kubernetes.io/warn"] == "restricted"


@pytest.mark.parametrize("overlay", ["", "webhook"])
def test_the_kustomize_installs_operator_passes_restricted(overlay: str) -> None:
    objects = rendering.kustomize(ROOT / "manifests" / overlay)
    assert _assert_restricted(objects) == 1
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"][ENFORCE] == "restricted"


@pytest.mark.parametrize("combination", sorted(CHART_VALUES))
def test_the_charts_operator_and_test_pods_pass_restricted(combination: str) -> None:
    objects = rendering.helm(CHART_VALUES[combination])
    pods = _assert_restricted(objects)
    assert pods == (3 if combination == "helm-test" else 1)


# ---- the checker itself: each control refuses what it must ----------------------------------


def _passing_pod() -> Obj:
    return {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
            }
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    }


BREAKS: dict[str, tuple[str, Any]] = {
    "host network": ("hostNetwork", True),
    "host pid": ("hostPID", True),
    "host path": ("volumes", [{"name": "h", "hostPath": {"path": "/"}}]),
    "nfs volume": ("volumes", [{"name": "n", "nfs": {"server": "s", "path": "/"}}]),
    "unsafe sysctl": (
        "securityContext",
        {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
        },
    ),
    "no pod seccomp": ("securityContext", {"runAsNonRoot": True}),
    "root may run": ("securityContext", {"seccompProfile": {"type": "RuntimeDefault"}}),
    "root user": (
        "securityContext",
        {"runAsNonRoot": True, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
    ),
}
CONTAINER_BREAKS: dict[str, Obj] = {
    "privileged": {"privileged": True},
    "escalation allowed": {"allowPrivilegeEscalation": True},
    "escalation unset": {"allowPrivilegeEscalation": None},
    "capabilities kept": {"capabilities": {"drop": []}},
    "capability added": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}},
    "unconfined": {"seccompProfile": {"type": "Unconfined"}},
    "container as root": {"runAsNonRoot": False},
    "proc mount": {"procMount": "Unmasked"},
    "selinux user": {"seLinuxOptions": {"user": "system_u"}},
    "apparmor": {"appArmorProfile": {"type": "Unconfined"}},
}


def test_the_checker_passes_a_pod_that_meets_every_control() -> None:
    assert pod_security.violations(_passing_pod()) == []


@pytest.mark.parametrize("control", sorted(BREAKS))
def test_the_checker_refuses_a_pod_that_breaks_a_pod_level_control(control: str) -> None:
    pod = _passing_pod()
    field, value = BREAKS[control]
    pod[field] = value
    assert pod_security.violations(pod), control


@pytest.mark.parametrize("control", sorted(CONTAINER_BREAKS))
def test_the_checker_refuses_a_container_that_breaks_a_control_init_ones_too(
    control: str,
) -> None:
    for field in ("containers", "initContainers"):
        pod = _passing_pod()
        container = copy.deepcopy(pod["containers"][0])
        context = {**container["securityContext"], **CONTAINER_BREAKS[control]}
        container["securityContext"] = {k: v for k, v in context.items() if v is not None}
        pod[field] = [*pod.get(field, []), container] if field == "initContainers" else [container]
        assert pod_security.violations(pod), (control, field)


def test_a_host_port_and_an_apparmor_annotation_break_even_baseline() -> None:
    pod = _passing_pod()
    pod["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 80}]
    annotations = {pod_security.APPARMOR_ANNOTATION + "c": "unconfined"}
    found = pod_security.violations(pod, annotations, level="baseline")
    assert len(found) == 2, found
