"""The operator's RBAC against what it was seen to call: every request recorded on the local
fleet (``operator_requests.json``, written by ``e2e/test_permissions.py``) is granted by
``permissions.py`` where it is needed, and nothing is granted that was not seen, except the
verbs below, each with the reason the scenarios do not reach it."""

from __future__ import annotations

from typing import Any

from polyserve_operator import permissions
from tests.install import rbac_evidence

USER = "system:serviceaccount:polyserve-system:polyserve-operator"

#: Granted, never recorded: calls on paths the recorded scenarios do not reach, and why.
UNRECORDED: dict[rbac_evidence.Need, str] = {
    ("", "configmaps", "delete"): (
        "the ConfigMap of a revision no pod ever ran (replaced before its ReplicaSet "
        "appeared) is deleted by the clean-up; every scenario's revisions ran"
    ),
    ("policy", "poddisruptionbudgets", "delete"): (
        "a model's PodDisruptionBudget goes when it scales down to one replica; no scenario "
        "scales a model down"
    ),
}


def _event(verb: str, resource: str, code: int = 200, **ref: str) -> dict[str, Any]:
    return {
        "verb": verb,
        "user": {"username": ref.pop("user", USER)},
        "responseStatus": {"code": code},
        "objectRef": {"resource": resource, **ref},
    }


def test_every_recorded_request_is_granted_where_it_is_needed() -> None:
    recorded = rbac_evidence.load()
    assert recorded, "no evidence: record it with e2e/test_permissions.py"
    assert rbac_evidence.ungranted(recorded) == {}


def test_every_granted_verb_was_recorded_or_is_an_explained_exception() -> None:
    recorded = set(rbac_evidence.load())
    tables = (permissions.NAMESPACED, permissions.CLUSTER, permissions.WEBHOOK)
    granted = set().union(*(permissions.granted(table) for table in tables))
    assert granted - recorded == set(UNRECORDED), "narrow permissions.py, or explain here"


def test_the_cluster_wide_grants_are_reads_and_the_webhooks_own_configurations() -> None:
    reads = {verb for *_, verb in permissions.granted(permissions.CLUSTER)}
    assert reads <= {"get", "list", "watch"}
    for rule in permissions.WEBHOOK:
        assert rule.verbs == ("create",) or rule.names == (permissions.MANAGED,)
    every = (*permissions.NAMESPACED, *permissions.CLUSTER, *permissions.WEBHOOK)
    granted = permissions.granted(every)
    assert not any("*" in part for item in granted for part in item)
    assert not any(resource == "secrets" for _, resource, _ in granted)


def test_an_apply_that_created_its_object_needs_create_and_other_users_need_nothing() -> None:
    events = [
        _event("patch", "deployments", 201, apiGroup="apps", namespace="a", name="m"),
        _event("patch", "deployments", 200, apiGroup="apps", namespace="a", name="m"),
        _event("patch", "inferencemodels", apiGroup="polyserve.io", subresource="status"),
        _event("delete", "configmaps", user="someone-else", namespace="a", name="x"),
        {"verb": "get", "user": {"username": USER}, "responseStatus": {"code": 200}},
    ]
    assert rbac_evidence.needs(events, USER) == {
        ("apps", "deployments", "patch"): set(),
        ("apps", "deployments", "create"): set(),
        ("polyserve.io", "inferencemodels/status", "patch"): set(),
    }


def test_a_name_outside_a_rules_resource_names_is_not_granted() -> None:
    group, kind = "admissionregistration.k8s.io", "validatingwebhookconfigurations"
    assert rbac_evidence.ungranted({(group, kind, "patch"): {permissions.MANAGED}}) == {}
    assert rbac_evidence.ungranted({(group, kind, "patch"): {"someone-elses"}}) == {
        (group, kind, "patch"): {"someone-elses"}
    }
    # Listed (no name) where only named objects are granted: not granted.
    assert rbac_evidence.ungranted({(group, kind, "list"): set()}) == {(group, kind, "list"): set()}
    assert rbac_evidence.ungranted({("", "namespaces", "create"): set()}) != {}
    assert rbac_evidence.ungranted({("", "configmaps", "list"): set()}) == {}
