"""Watches: replay from a resourceVersion, 410 Expired, selectors, bookmarks, initial events,
timeouts, and the same over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from polyserve_sandbox.apiserver import http, watching
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import configmap, pod

Obj = dict[str, Any]


async def _take(stream: AsyncIterator[tuple[str, Obj]], count: int) -> list[tuple[str, Obj]]:
    found = []
    async with asyncio.timeout(5):
        async for event in stream:
            found.append(event)
            if len(found) == count:
                break
    return found


def _names(events: list[tuple[str, Obj]]) -> list[tuple[str, str]]:
    return [(kind, obj["metadata"].get("name", "")) for kind, obj in events]


async def test_a_watch_resumes_from_a_resource_version() -> None:
    store = apistore.Store()
    pods = store.registry.lookup("v1", "Pod")
    store.create(pod("before"))
    since = store.version
    store.create(pod("after"))
    store.create(configmap("other-kind"))
    stream = watching.events(store, pods, "default", resource_version=str(since))
    events = await _take(stream, 1)
    store.delete("v1", "Pod", "default", "after")
    events += await _take(stream, 1)
    await stream.aclose()
    assert _names(events) == [("ADDED", "after"), ("DELETED", "after")]
    assert int(events[1][1]["metadata"]["resourceVersion"]) == store.version


async def test_a_watch_without_a_version_starts_with_what_exists() -> None:
    store = apistore.Store()
    store.create(pod("a"))
    stream = watching.events(store, store.registry.lookup("v1", "Pod"), None, resource_version="0")
    assert _names(await _take(stream, 1)) == [("ADDED", "a")]
    await stream.aclose()


async def test_a_version_older_than_the_log_answers_410_expired() -> None:
    store = apistore.Store(history=3)
    for index in range(10):
        store.create(configmap(f"c{index}"))
    stream = watching.events(
        store, store.registry.lookup("v1", "ConfigMap"), None, resource_version="2"
    )
    [(kind, status)] = await _take(stream, 1)
    assert kind == "ERROR"
    assert (status["code"], status["reason"]) == (410, "Expired")
    assert status["message"].startswith("too old resource version: 2")


async def test_selectors_turn_matching_changes_into_added_and_deleted() -> None:
    store = apistore.Store()
    store.create(pod("p"))
    stream = watching.events(
        store,
        store.registry.lookup("v1", "Pod"),
        "default",
        label_selector="team=a",
        resource_version=str(store.version),
    )
    store.patch(
        "v1", "Pod", "default", "p", {"metadata": {"labels": {"team": "a"}}}, patch_type="merge"
    )
    store.patch(
        "v1", "Pod", "default", "p", {"metadata": {"annotations": {"x": "y"}}}, patch_type="merge"
    )
    store.patch(
        "v1", "Pod", "default", "p", {"metadata": {"labels": {"team": "b"}}}, patch_type="merge"
    )
    events = await _take(stream, 3)
    await stream.aclose()
    assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "DELETED"]


async def test_initial_events_end_with_a_bookmark_and_bookmarks_keep_coming() -> None:
    store = apistore.Store()
    store.create(pod("a"))
    stream = watching.events(
        store,
        store.registry.lookup("v1", "Pod"),
        "default",
        send_initial_events=True,
        bookmarks=True,
        bookmark_interval=0.05,
    )
    events = await _take(stream, 3)
    await stream.aclose()
    assert [kind for kind, _ in events] == ["ADDED", "BOOKMARK", "BOOKMARK"]
    assert events[1][1]["metadata"]["annotations"] == {watching.INITIAL_EVENTS_END: "true"}
    assert events[2][1]["metadata"]["resourceVersion"] == str(store.version)


async def test_a_watch_ends_after_its_timeout() -> None:
    store = apistore.Store()
    stream = watching.events(
        store,
        store.registry.lookup("v1", "Pod"),
        None,
        resource_version=str(store.version),
        timeout_seconds=0.05,
    )
    async with asyncio.timeout(5):
        assert [event async for event in stream] == []


@pytest.fixture()
async def served() -> AsyncIterator[tuple[apistore.Store, str]]:
    store = apistore.Store()
    server = http.ApiServer(store)
    url = await server.start()
    yield store, url
    await server.stop()


async def _lines(response: aiohttp.ClientResponse, count: int) -> list[Obj]:
    found = []
    async with asyncio.timeout(5):
        while len(found) < count:
            line = await response.content.readline()
            found.append(json.loads(line))
    return found


async def test_an_http_watch_streams_json_lines_from_a_version(
    served: tuple[apistore.Store, str],
) -> None:
    store, url = served
    since = store.version
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/api/v1/namespaces/default/pods",
            params={"watch": "1", "resourceVersion": str(since)},
        ) as response,
    ):
        assert response.status == 200
        store.create(pod("a"))
        store.patch(
            "v1",
            "Pod",
            "default",
            "a",
            {"metadata": {"labels": {"x": "1"}}},
            patch_type="merge",
        )
        events = await _lines(response, 2)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    assert events[1]["object"]["metadata"]["labels"]["x"] == "1"


async def test_an_http_watch_answers_expired_as_an_error_event() -> None:
    store = apistore.Store(history=2)
    for index in range(5):
        store.create(configmap(f"c{index}"))
    server = http.ApiServer(store)
    url = await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{url}/api/v1/configmaps", params={"watch": "true", "resourceVersion": "1"}
            ) as response,
        ):
            [event] = await _lines(response, 1)
    finally:
        await server.stop()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_a_server_stop_ends_open_watches() -> None:
    server = http.ApiServer(apistore.Store())
    url = await server.start()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/api/v1/pods", params={"watch": "1"}) as response,
    ):
        assert response.status == 200
        async with asyncio.timeout(5):
            await server.stop()
            assert await response.content.read() == b""
