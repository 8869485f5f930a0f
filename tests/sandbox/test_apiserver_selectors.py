"""Label and field selectors, as strings and as LabelSelector objects."""

from __future__ import annotations

import pytest

from polyserve_sandbox.apiserver import errors, selectors

LABELS = {"app": "web", "tier": "front", "version": "3"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app!=api", True),
        ("missing!=x", True),
        ("app in (api, web)", True),
        ("app notin (api,web)", False),
        ("missing notin (a)", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
        ("version>2", True),
        ("version<2", False),
        ("app=web,tier=front", True),
        ("app=web, tier=back", False),
        ("  app = web ", True),
    ],
)
def test_label_selector_strings_match_as_the_real_server(text: str, expected: bool) -> None:
    assert selectors.matches_labels(selectors.parse_labels(text), LABELS) is expected


@pytest.mark.parametrize("text", ["app=(web", "a b", "app in web", "bad key!=x=y", "v>x"])
def test_a_selector_that_does_not_parse_is_a_bad_request(text: str) -> None:
    with pytest.raises(errors.ApiError) as caught:
        selectors.parse_labels(text)
    assert caught.value.status == 400


def test_label_selector_objects_match_labels_and_expressions() -> None:
    selector = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "edge"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    parsed = selectors.from_object(selector)
    assert selectors.matches_labels(parsed, LABELS)
    assert not selectors.matches_labels(parsed, {**LABELS, "canary": "1"})
    assert selectors.format_labels(parsed) == "app=web,tier in (edge,front),!canary"
    assert selectors.from_object({}) == ()


def test_field_selectors_compare_dotted_paths_as_strings() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"nodeName": "node-1", "hostNetwork": False},
        "status": {"phase": "Running"},
    }
    assert selectors.matches_fields(
        selectors.parse_fields("spec.nodeName=node-1,status.phase==Running"), pod
    )
    assert selectors.matches_fields(selectors.parse_fields("metadata.name!=q"), pod)
    assert selectors.matches_fields(selectors.parse_fields("spec.hostNetwork=false"), pod)
    assert selectors.matches_fields(selectors.parse_fields("spec.schedulerName="), pod)
    assert not selectors.matches_fields(selectors.parse_fields("metadata.namespace=other"), pod)
