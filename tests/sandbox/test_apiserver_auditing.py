"""The API server's audit log: off by default; when on, one Event per request with the user
its token names, the verb in RBAC's words, the object, and the answer's code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from polyserve_sandbox.apiserver import auditing, http
from polyserve_sandbox.apiserver import store as apistore

OPERATOR = "system:serviceaccount:polyserve-system:polyserve-operator"
CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture()
async def audited(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    path = tmp_path / "logs" / "audit.log"
    server = http.ApiServer(apistore.Store(), audit_log=path)
    url = await server.start()
    try:
        yield url, path
    finally:
        await server.stop()


def _headers(token: str | None = OPERATOR, content_type: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def _config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


async def test_each_request_is_one_event_in_rbacs_words(audited: tuple[str, Path]) -> None:
    url, path = audited
    async with aiohttp.ClientSession(url) as session:
        async with session.post(CM, json=_config_map("a"), headers=_headers()) as r:
            assert r.status == 201
        async with session.get(f"{CM}/a", headers=_headers()) as r:
            assert r.status == 200
        async with session.get(CM, headers=_headers()) as r:
            assert r.status == 200
        merge = _headers(content_type="application/merge-patch+json")
        async with session.patch(f"{CM}/a", data=json.dumps({"data": {"k": "v"}}), headers=merge):
            pass
        apply = _headers(content_type="application/apply-patch+yaml")
        body = json.dumps(_config_map("b"))
        async with session.patch(f"{CM}/b?fieldManager=me", data=body, headers=apply) as r:
            assert r.status == 201  # created by server-side apply
        async with session.patch(f"{CM}/b?fieldManager=me", data=body, headers=apply) as r:
            assert r.status == 200
        async with session.delete(f"{CM}/a", headers=_headers()) as r:
            assert r.status == 200
        async with session.delete(f"{CM}/a", headers=_headers(token=None)) as r:
            assert r.status == 404
        async with session.get("/apis", headers=_headers()) as r:
            assert r.status == 200
    events = auditing.read(path)
    seen = [
        (
            e["verb"],
            (e.get("objectRef") or {}).get("resource"),
            (e.get("objectRef") or {}).get("name"),
            e["responseStatus"]["code"],
            e["user"]["username"],
        )
        for e in events
    ]
    anonymous = auditing.ANONYMOUS
    assert seen == [
        ("create", "configmaps", None, 201, OPERATOR),
        ("get", "configmaps", "a", 200, OPERATOR),
        ("list", "configmaps", None, 200, OPERATOR),
        ("patch", "configmaps", "a", 200, OPERATOR),
        ("patch", "configmaps", "b", 201, OPERATOR),
        ("patch", "configmaps", "b", 200, OPERATOR),
        ("delete", "configmaps", "a", 200, OPERATOR),
        ("delete", "configmaps", "a", 404, anonymous),
        ("get", None, None, 200, OPERATOR),
    ]
    assert all(e["apiVersion"] == "audit.k8s.io/v1" and e["kind"] == "Event" for e in events)
    assert events[1]["objectRef"] == {
        "apiGroup": "",
        "apiVersion": "v1",
        "resource": "configmaps",
        "namespace": "default",
        "name": "a",
    }


async def test_a_watch_is_written_when_it_starts_and_subresources_are_named(
    audited: tuple[str, Path],
) -> None:
    url, path = audited
    async with aiohttp.ClientSession(url) as session:
        watching = await session.get(f"{CM}?watch=1", headers=_headers())
        assert watching.status == 200

        def written() -> list[dict[str, Any]]:
            return auditing.read(path) if path.exists() else []

        for _ in range(200):  # the line is written as the stream starts
            if written():
                break
            await asyncio.sleep(0.01)
        (event,) = written()
        assert event["verb"] == "watch"
        watching.close()
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
        async with session.post("/api/v1/namespaces", json=namespace, headers=_headers()):
            pass
        async with session.get("/api/v1/namespaces/x/status", headers=_headers()) as r:
            assert r.status == 200
    ref = auditing.read(path)[-1]["objectRef"]
    assert (ref["resource"], ref["subresource"], ref["name"]) == ("namespaces", "status", "x")


async def test_no_log_is_written_unless_asked() -> None:
    server = http.ApiServer(apistore.Store())
    url = await server.start()
    try:
        async with (
            aiohttp.ClientSession(url) as session,
            session.get(CM, headers=_headers()) as r,
        ):
            assert r.status == 200
    finally:
        await server.stop()
    assert server.audit is None


def test_the_kubeconfigs_token_is_the_user_it_acts_as(tmp_path: Path) -> None:
    written = http.write_kubeconfig("http://127.0.0.1:1", tmp_path / "kc", token=OPERATOR)
    assert f"token: {OPERATOR}" in written.read_text()
    assert auditing.user(f"Bearer {OPERATOR}") == OPERATOR
    assert auditing.user(None) == auditing.user("Basic xyz") == auditing.ANONYMOUS
