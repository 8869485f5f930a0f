"""The API server's request counts (``/metrics``) and its fault plan (``/sandbox/faults``),
over real HTTP: what is counted, what is refused and how, and that a refused request
changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import parser as prometheus_parser

from polyserve_sandbox import config as sandbox_config
from polyserve_sandbox.apiserver import crds, faults, http
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import configmap, model

Obj = dict[str, Any]
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MODELS = "/apis/polyserve.io/v1alpha1/namespaces/default/inferencemodels"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


class Api:
    def __init__(self, session: aiohttp.ClientSession, server: http.ApiServer) -> None:
        self.session, self.server, self.url = session, server, server.url

    async def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method, self.url + path, data=data, headers={"Content-Type": content_type}
        ) as response:
            text = await response.text()
            parsed = json.loads(text) if text and "json" in response.content_type else text
            return response.status, parsed, response

    async def plan(self, plan: Obj | None) -> Obj:
        """Set the fault plan through the server's own endpoint (None: no faults)."""
        if plan is None:
            status, body, _ = await self.call("DELETE", "/sandbox/faults")
        else:
            status, body, _ = await self.call("PUT", "/sandbox/faults", plan)
        assert status == 200, body
        result: Obj = body
        return result

    async def faults(self) -> Obj:
        """The plan at work and what it injected so far."""
        status, body, _ = await self.call("GET", "/sandbox/faults")
        assert status == 200, body
        result: Obj = body
        return result

    async def counts(self) -> dict[tuple[str, ...], float]:
        """apiserver_request_total as (verb, resource, subresource, scope, code) -> count."""
        status, text, _ = await self.call("GET", "/metrics")
        assert status == 200
        found: dict[tuple[str, ...], float] = {}
        for family in prometheus_parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "apiserver_request_total":
                    labels = sample.labels
                    key = tuple(
                        labels[k] for k in ("verb", "resource", "subresource", "scope", "code")
                    )
                    found[key] = sample.value
        return found


@pytest.fixture()
async def api() -> AsyncIterator[Api]:
    store = apistore.Store()
    crds.register_project_crds(store)
    server = http.ApiServer(store)
    await server.start()
    async with aiohttp.ClientSession() as session:
        yield Api(session, server)
    await server.stop()


async def test_requests_are_counted_by_verb_resource_scope_and_code(api: Api) -> None:
    await api.call("POST", CONFIGMAPS, configmap("a", data={"k": "v"}))
    await api.call("POST", CONFIGMAPS, configmap("a"))  # 409 AlreadyExists
    await api.call("GET", f"{CONFIGMAPS}/a")
    await api.call("GET", f"{CONFIGMAPS}/missing")
    await api.call("GET", "/api/v1/configmaps")
    await api.call("PATCH", f"{CONFIGMAPS}/a?fieldManager=t", configmap("a"), APPLY)
    await api.call("POST", MODELS, model("m"))
    await api.call("PATCH", f"{MODELS}/m/status", {"status": {"revision": "r"}}, MERGE)
    async with api.session.get(f"{api.url}{CONFIGMAPS}?watch=1&timeoutSeconds=1") as stream:
        await stream.read()
    await api.call("DELETE", f"{CONFIGMAPS}/a")
    await api.call("GET", "/api")  # discovery: counted with no resource
    counts = await api.counts()
    assert counts[("POST", "configmaps", "", "namespace", "201")] == 1
    assert counts[("POST", "configmaps", "", "namespace", "409")] == 1
    assert counts[("GET", "configmaps", "", "resource", "200")] == 1
    assert counts[("GET", "configmaps", "", "resource", "404")] == 1
    assert counts[("LIST", "configmaps", "", "cluster", "200")] == 1
    assert counts[("APPLY", "configmaps", "", "resource", "200")] == 1
    assert counts[("PATCH", "inferencemodels", "status", "resource", "200")] == 1
    assert counts[("WATCH", "configmaps", "", "namespace", "200")] == 1
    assert counts[("DELETE", "configmaps", "", "resource", "200")] == 1
    assert counts[("GET", "", "", "", "200")] == 1
    assert api.server.requests.total == sum(counts.values())


async def test_request_durations_are_a_histogram_by_verb_and_resource_without_watches(
    api: Api,
) -> None:
    for index in range(3):
        await api.call("POST", CONFIGMAPS, configmap(f"d{index}"))
    await api.call("GET", f"{CONFIGMAPS}/d0")
    async with api.session.get(f"{api.url}{CONFIGMAPS}?watch=1&timeoutSeconds=1") as stream:
        await stream.read()
    status, text, _ = await api.call("GET", "/metrics")
    assert status == 200
    (family,) = [
        f
        for f in prometheus_parser.text_string_to_metric_families(text)
        if f.name == "apiserver_request_duration_seconds"
    ]
    assert family.type == "histogram"
    series: dict[tuple[str, str], dict[str, float]] = {}
    for sample in family.samples:
        key = (sample.labels["verb"], sample.labels["resource"])
        le = sample.labels.get("le")
        series.setdefault(key, {})[le or sample.name.rsplit("_", 1)[1]] = sample.value
    assert series[("POST", "configmaps")]["count"] == 3
    assert series[("POST", "configmaps")]["+Inf"] == 3
    assert 0 < series[("POST", "configmaps")]["sum"] < 3 * 60
    assert series[("GET", "configmaps")]["count"] == 1
    buckets = [v for k, v in series[("POST", "configmaps")].items() if k not in ("sum", "count")]
    assert buckets == sorted(buckets), "cumulative"
    assert not any(verb == "WATCH" for verb, _ in series), "watches are not timed"


async def test_no_faults_are_injected_without_a_plan(api: Api) -> None:
    for index in range(50):
        status, body, _ = await api.call("POST", CONFIGMAPS, configmap(f"c{index}"))
        assert status == 201, body
    assert (await api.faults())["injected"] == []


async def test_a_plan_refuses_writes_at_its_rates_and_a_refused_write_changes_nothing(
    api: Api,
) -> None:
    await api.call("POST", CONFIGMAPS, configmap("a", data={"n": "0"}))
    await api.plan(
        {"seed": 3, "rules": [{"verbs": ["PATCH"], "conflict": 0.2, "throttle": 0.2, "error": 0.2}]}
    )
    answers: dict[int, int] = {}
    for index in range(300):
        status, body, _ = await api.call(
            "PATCH", f"{CONFIGMAPS}/a", {"data": {"n": str(index + 1)}}, MERGE
        )
        answers[status] = answers.get(status, 0) + 1
        if status != 200:
            assert body["kind"] == "Status" and body["code"] == status
            after = api.server.store.get("v1", "ConfigMap", "default", "a")
            assert after["data"]["n"] != str(index + 1)  # refused before it was carried out
    assert set(answers) == {200, 409, 429, 500}
    for code in (409, 429, 500):
        assert 30 <= answers[code] <= 95, answers  # 20% of 300, give or take
    status, _, _ = await api.call("GET", f"{CONFIGMAPS}/a")
    assert status == 200  # GET is not in the rule
    injected = {(i["verb"], i["fault"]): i["count"] for i in (await api.faults())["injected"]}
    assert injected[("PATCH", "409")] == answers[409]


async def test_the_same_seed_refuses_the_same_requests(api: Api) -> None:
    plan = {"seed": 11, "rules": [{"verbs": ["GET"], "error": 0.5}]}

    async def run() -> list[int]:
        await api.plan(plan)
        return [(await api.call("GET", "/api/v1/namespaces/default"))[0] for _ in range(40)]

    first = await run()
    assert first == await run()
    assert 200 in first and 500 in first


async def test_a_throttled_request_says_when_to_retry(api: Api) -> None:
    await api.plan({"rules": [{"throttle": 1, "retryAfterSeconds": 3}]})
    status, body, response = await api.call("GET", f"{CONFIGMAPS}")
    assert status == 429
    assert response.headers["Retry-After"] == "3"
    assert body["reason"] == "TooManyRequests"
    assert body["details"]["retryAfterSeconds"] == 3


async def test_rules_match_verbs_and_resource_globs_first_rule_first(api: Api) -> None:
    await api.call("POST", MODELS, model("m"))
    await api.plan(
        {
            "rules": [
                {"verbs": ["PATCH"], "resources": ["*/status"], "conflict": 1},
                {"resources": ["inferencemodels"], "error": 1},
            ]
        }
    )
    status, _, _ = await api.call(
        "PATCH", f"{MODELS}/m/status", {"status": {"revision": "r"}}, MERGE
    )
    assert status == 409
    status, _, _ = await api.call("GET", f"{MODELS}/m")
    assert status == 500
    status, _, _ = await api.call("GET", CONFIGMAPS)
    assert status == 200
    # Discovery, OpenAPI and the version are never refused, whatever the rules say.
    await api.plan({"rules": [{"error": 1}]})
    for path in ("/api", "/apis", "/api/v1", "/version", "/openapi/v2"):
        assert (await api.call("GET", path))[0] == 200, path


async def test_a_lost_reply_hides_a_write_that_happened(api: Api) -> None:
    await api.plan({"rules": [{"verbs": ["POST"], "lostReply": 1}]})
    status, _, _ = await api.call("POST", CONFIGMAPS, configmap("kept"))
    assert status == 500
    assert api.server.store.try_get("v1", "ConfigMap", "default", "kept") is not None
    # A client that retries meets its own write: an error is never a lost reply.
    status, body, _ = await api.call("POST", CONFIGMAPS, configmap("kept"))
    assert (status, body["reason"]) == (409, "AlreadyExists")


async def _events(api: Api, path: str) -> list[Obj]:
    async with api.session.get(api.url + path) as stream:
        return [json.loads(line) for line in (await stream.text()).splitlines() if line]


async def test_a_resumed_watch_is_answered_410_expired_by_the_plan(api: Api) -> None:
    await api.call("POST", CONFIGMAPS, configmap("a"))
    version = api.server.store.version
    await api.plan({"watches": {"expire": 1}})
    events = await _events(api, f"{CONFIGMAPS}?watch=1&resourceVersion={version}")
    assert [e["type"] for e in events] == ["ERROR"]
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    # A watch that starts from the current state (no resourceVersion) is not resuming.
    events = await _events(api, f"{CONFIGMAPS}?watch=1&timeoutSeconds=1")
    assert [e["type"] for e in events] == ["ADDED"]


async def test_a_watch_is_closed_early_by_the_plan(api: Api) -> None:
    await api.call("POST", CONFIGMAPS, configmap("a"))
    await api.plan({"watches": {"close": 1, "closeWithinSeconds": 0.2}})
    loop_time = asyncio.get_running_loop().time
    began = loop_time()
    events = await _events(api, f"{CONFIGMAPS}?watch=1&timeoutSeconds=30")
    assert loop_time() - began < 5
    assert [e["type"] for e in events] == ["ADDED"]
    injected = (await api.faults())["injected"]
    assert [(i["verb"], i["resource"], i["fault"]) for i in injected] == [
        ("WATCH", "configmaps", "closed")
    ]


async def test_a_plan_that_does_not_add_up_is_refused(api: Api) -> None:
    status, body, _ = await api.call(
        "PUT", "/sandbox/faults", {"rules": [{"conflict": 0.6, "error": 0.6}]}
    )
    assert status == 400 and "must not exceed 1" in body["message"]
    status, body, _ = await api.call("PUT", "/sandbox/faults", {"rules": [{"verbs": ["FETCH"]}]})
    assert status == 400 and "unknown verbs" in body["message"]


def test_a_plan_comes_from_sandbox_yaml_or_replaces_it_from_the_environment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sandbox.yaml"
    assert sandbox_config.load(path).faults is None
    path.write_text("faults: {seed: 4, rules: [{verbs: [PATCH], conflict: 0.1}]}\n")
    cfg = sandbox_config.load(path)
    assert cfg.faults == faults.FaultPlan(
        seed=4, rules=[faults.Rule(verbs=["PATCH"], conflict=0.1)]
    )
    replaced = sandbox_config.load(path, faults='{"watches": {"expire": 0.5}}')
    assert replaced.faults == faults.FaultPlan(watches=faults.WatchFaults(expire=0.5))
