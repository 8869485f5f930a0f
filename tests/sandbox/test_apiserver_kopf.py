"""kopf itself (``kopf.testing.KopfRunner``, ``run -A --standalone``) against the sandbox's
API server: discovery, list+watch, create/update/delete handlers, a timer, status patches,
events, and its finalizer added and released."""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
from kopf.testing import KopfRunner

from polyserve_sandbox.apiserver import crds
from tests.sandbox.apiserver_support import ServerThread, model, wait_for

Obj = dict[str, Any]
API = "polyserve.io/v1alpha1"
FINALIZER = "sandbox.test/finalizer"


def _registry(url: str, seen: list[tuple[str, str]]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    lock = threading.Lock()

    def note(what: str, name: str) -> None:
        with lock:
            seen.append((what, name))

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, scheme="Bearer", token="sandbox")

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="sandbox.test"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="sandbox.test"
        )
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.INFO
        settings.background.cancellation_polling = 0.2

    @kopf.on.create("polyserve.io", "v1alpha1", "inferencemodels", registry=registry)
    def created(name: str, body: Any, patch: kopf.Patch, **_: Any) -> None:
        note("create", name)
        patch.status["readyReplicas"] = 0
        kopf.info(body, reason="Seen", message=f"seen {name}")

    @kopf.on.update("polyserve.io", "v1alpha1", "inferencemodels", registry=registry)
    def updated(name: str, patch: kopf.Patch, new: Any, **_: Any) -> None:
        note("update", name)
        patch.status["readyReplicas"] = new["spec"]["replicas"]

    @kopf.on.delete("polyserve.io", "v1alpha1", "inferencemodels", registry=registry)
    def deleted(name: str, **_: Any) -> None:
        note("delete", name)

    @kopf.timer("polyserve.io", "v1alpha1", "inferencemodels", interval=0.2, registry=registry)
    def tick(name: str, **_: Any) -> None:
        note("timer", name)

    return registry


def test_kopf_handles_create_update_timer_and_delete_through_the_sandbox() -> None:
    seen: list[tuple[str, str]] = []
    with ServerThread() as server:
        server.call(crds.register_project_crds)
        registry = _registry(server.url, seen)
        with KopfRunner(["run", "-A", "--standalone"], registry=registry, timeout=30) as runner:
            server.call(lambda s: s.create(model("watched")))

            def current() -> Obj | None:
                return server.call(lambda s: s.try_get(API, "InferenceModel", "default", "watched"))

            wait_for("the create handler", lambda: ("create", "watched") in seen)
            wait_for(
                "kopf's finalizer and status",
                lambda: (
                    (obj := current())
                    and FINALIZER in obj["metadata"].get("finalizers", [])
                    and obj.get("status", {}).get("readyReplicas") == 0
                ),
            )
            server.call(
                lambda s: s.patch(
                    API,
                    "InferenceModel",
                    "default",
                    "watched",
                    {"spec": {"replicas": 3}},
                    patch_type="merge",
                )
            )
            wait_for("the update handler", lambda: ("update", "watched") in seen)
            wait_for(
                "the status of the update",
                lambda: (obj := current()) and obj["status"]["readyReplicas"] == 3,
            )
            wait_for("two ticks of the timer", lambda: seen.count(("timer", "watched")) >= 2)
            server.call(lambda s: s.delete(API, "InferenceModel", "default", "watched"))
            wait_for("the finalizer to be released", lambda: current() is None)
        events = server.call(
            lambda s: s.list("v1", "Event", "default", field_selector="involvedObject.name=watched")
        )
    assert runner.exit_code == 0, runner.output
    assert ("delete", "watched") in seen
    assert {"Seen"} <= {e["reason"] for e in events}
    assert "inconsistencies" not in runner.output, runner.output
