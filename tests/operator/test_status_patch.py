"""Status is written with JSON merge patches: a key the operator drops must be sent as null."""

from __future__ import annotations

from typing import Any

from polyserve_operator.handlers import replacing


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def test_a_dropped_key_is_sent_as_null_so_the_server_removes_it() -> None:
    old = {"current": "xeon", "target": "gpu", "blocked": "no node", "moves": [1, 2]}
    new = {"current": "xeon", "moves": [1, 2, 3]}
    assert replacing(old, new) == {
        "current": "xeon",
        "moves": [1, 2, 3],
        "target": None,
        "blocked": None,
    }
    assert merge(old, replacing(old, new)) == new


def test_nested_dicts_lose_their_dropped_keys_too_and_lists_are_replaced_whole() -> None:
    old = {"phase": "Progressing", "canary": {"revision": "a", "weight": 10}, "steps": [{"x": 1}]}
    new = {"phase": "Healthy", "canary": {"revision": "a"}, "steps": [{"y": 2}]}
    assert merge(old, replacing(old, new)) == new


def test_without_a_previous_value_the_new_one_goes_as_it_is() -> None:
    assert replacing(None, {"a": 1}) == {"a": 1}
    assert replacing({"a": 1}, "text") == "text"
