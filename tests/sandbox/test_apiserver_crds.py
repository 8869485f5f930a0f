"""CustomResourceDefinitions: registration, status, schema defaults, pruning, validation."""

from __future__ import annotations

from typing import Any

import pytest

from polyserve_sandbox.apiserver import crds
from polyserve_sandbox.apiserver import store as apistore
from tests.sandbox.apiserver_support import model

Obj = dict[str, Any]


def widget_crd(**version: Any) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {
                "plural": "widgets",
                "singular": "widget",
                "kind": "Widget",
                "shortNames": ["wd"],
            },
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
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1},
                                        "color": {
                                            "type": "string",
                                            "enum": ["red", "blue"],
                                            "default": "red",
                                        },
                                        "port": {"x-kubernetes-int-or-string": True},
                                        "note": {"type": "string", "nullable": True},
                                        "extra": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"ready": {"type": "boolean"}},
                                },
                            },
                        }
                    },
                    **version,
                }
            ],
        },
    }


def widget(name: str = "w", **spec: Any) -> Obj:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"size": 1, **spec},
    }


@pytest.fixture()
def store() -> apistore.Store:
    store = apistore.Store()
    store.create(widget_crd())
    return store


def test_a_created_crd_is_established_and_served(store: apistore.Store) -> None:
    crd = store.get(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com"
    )
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert crd["status"]["acceptedNames"]["kind"] == "Widget"
    resource = store.registry.lookup("example.com/v1", "Widget")
    assert resource.namespaced and resource.short_names == ("wd",) and resource.has_status
    assert store.create(widget())["metadata"]["generation"] == 1


def test_a_crd_with_a_wrong_name_is_invalid() -> None:
    store = apistore.Store()
    crd = widget_crd()
    crd["metadata"]["name"] = "widgets"
    with pytest.raises(apistore.ApiError) as caught:
        store.create(crd)
    assert caught.value.status == 422
    assert 'must be spec.names.plural+"."+spec.group' in caught.value.message


def test_schema_defaults_are_applied_and_unknown_fields_pruned(store: apistore.Store) -> None:
    warnings: list[str] = []
    created = store.create(
        widget(
            port="http", note=None, extra={"anything": {"goes": 1}}, labels={"a": "b"}, unknown=1
        ),
        warnings=warnings,
    )
    assert created["spec"]["color"] == "red"
    assert created["spec"]["extra"] == {"anything": {"goes": 1}}
    assert "unknown" not in created["spec"]
    assert warnings == ['unknown field "spec.unknown"']


def test_strict_field_validation_refuses_unknown_fields_with_the_real_message(
    store: apistore.Store,
) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.create(widget(unknown=1, other=2), field_validation="Strict")
    assert caught.value.status == 400
    assert caught.value.message == (
        'Widget in version "v1" cannot be handled as a Widget: strict decoding error: '
        'unknown field "spec.unknown", unknown field "spec.other"'
    )


def test_schema_violations_are_invalid_with_field_causes(store: apistore.Store) -> None:
    with pytest.raises(apistore.ApiError) as caught:
        store.create(widget(size=0, color="green"))
    error = caught.value
    assert error.status == 422
    assert error.message.startswith('Widget.example.com "w" is invalid: [')
    causes = {c["field"]: c for c in error.details["causes"]}
    assert (
        causes["spec.color"]["message"]
        == 'Unsupported value: "green": supported values: "red", "blue"'
    )
    assert (
        causes["spec.size"]["message"]
        == "Invalid value: 0: spec.size in body should be greater than or equal to 1"
    )
    with pytest.raises(apistore.ApiError) as missing:
        store.create({**widget(), "spec": {}})
    assert missing.value.message == 'Widget.example.com "w" is invalid: spec.size: Required value'


def test_status_is_validated_and_written_through_its_subresource(store: apistore.Store) -> None:
    store.create(widget())
    with pytest.raises(apistore.ApiError):
        store.patch(
            "example.com/v1",
            "Widget",
            "default",
            "w",
            {"status": {"ready": "yes"}},
            patch_type="merge",
            subresource="status",
        )
    done = store.patch(
        "example.com/v1",
        "Widget",
        "default",
        "w",
        {"status": {"ready": True}},
        patch_type="merge",
        subresource="status",
    )
    assert done["status"] == {"ready": True}


def test_strategic_merge_patch_of_a_custom_resource_is_unsupported(store: apistore.Store) -> None:
    store.create(widget())
    with pytest.raises(apistore.ApiError) as caught:
        store.patch(
            "example.com/v1",
            "Widget",
            "default",
            "w",
            {"spec": {"size": 2}},
            patch_type="strategic",
        )
    assert caught.value.status == 415
    assert "try --type merge" in caught.value.message


def test_deleting_a_crd_deletes_its_objects_honouring_their_finalizers(
    store: apistore.Store,
) -> None:
    held = widget("held")
    held["metadata"]["finalizers"] = ["example.com/cleanup"]
    store.create(held)
    store.create(widget("free"))
    store.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com")
    assert store.try_get("example.com/v1", "Widget", "default", "free") is None
    assert store.get("example.com/v1", "Widget", "default", "held")["metadata"]["deletionTimestamp"]
    assert store.registry.find("example.com/v1", "Widget") is not None
    store.patch(
        "example.com/v1",
        "Widget",
        "default",
        "held",
        {"metadata": {"finalizers": None}},
        patch_type="merge",
    )
    assert (
        store.try_get(
            "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com"
        )
        is None
    )
    assert store.registry.find("example.com/v1", "Widget") is None


def test_the_project_crds_register_and_the_examples_validate_strictly() -> None:
    store = apistore.Store()
    crds.register_project_crds(store)
    crds.register_project_crds(store)  # idempotent
    created = store.create(model("resnet"), field_validation="Strict")
    assert created["spec"]["hardware"]["precision"] == "fp32"  # the schema's default
    resource = store.registry.lookup("polyserve.io/v1alpha1", "InferenceModel")
    assert resource.short_names == ("im",) and resource.printer_columns


def test_only_what_a_write_changes_is_validated_again(store: apistore.Store) -> None:
    """Ratcheting, as the real server does: an invalid value already stored (here put there
    under an older schema) does not block writes that leave it as it is."""
    store.create(widget(color="blue"))
    crd = store.get(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "widgets.example.com"
    )
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["color"]["enum"] = ["red"]
    store.replace(crd)
    patched = store.patch(
        "example.com/v1", "Widget", "default", "w", {"spec": {"size": 5}}, patch_type="merge"
    )
    assert patched["spec"] == {"size": 5, "color": "blue"}
    with pytest.raises(apistore.ApiError):
        store.patch(
            "example.com/v1",
            "Widget",
            "default",
            "w",
            {"spec": {"color": "green"}},
            patch_type="merge",
        )
