"""Object helpers: copies, timestamps, generated names, and the metadata checks every kind
gets (names, labels, annotation size), worded as the real server words them.
"""

from __future__ import annotations

import datetime
import json
import random
import re
from typing import Any

from polyserve_sandbox.apiserver import errors, selectors
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]

# Metadata only the server sets; a create drops what a client sent.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
)
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

_GENERATED = "bcdfghjklmnpqrstvwxz2456789"  # as apiserver's names.SimpleNameGenerator
_random = random.Random()


def clone(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), several times faster than
    ``copy.deepcopy``: every object handed in or out of the store goes through it."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with seconds, as ``metav1.Time`` serialises."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generated_name(prefix: str) -> str:
    return prefix + "".join(_random.choice(_GENERATED) for _ in range(5))


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_SUBDOMAIN_TEXT = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_1123_TEXT = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_1035_TEXT = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_VALUE_TEXT = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?"
    "[A-Za-z0-9])?')"
)
# RBAC names are path segments ("system:controller:x"), not DNS names.
_PATH_SEGMENT_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
_MAX_ANNOTATIONS = 256 * 1024


def _name_error(resource: Resource, name: str) -> str | None:
    if resource.group == "rbac.authorization.k8s.io" and resource.kind in _PATH_SEGMENT_KINDS:
        if name in (".", "..") or "/" in name or "%" in name:
            return 'may not contain "/" or "%" and may not be "." or ".."'
        return None
    if resource.storage == ("", "Namespace"):
        ok, text, limit = _LABEL_1123.match(name), _LABEL_1123_TEXT, 63
    elif resource.storage == ("", "Service"):
        ok, text, limit = _LABEL_1035.match(name), _LABEL_1035_TEXT, 63
    else:
        ok, text, limit = _SUBDOMAIN.match(name), _SUBDOMAIN_TEXT, 253
    if len(name) > limit:
        return f"must be no more than {limit} characters"
    return None if ok else text


def validate_metadata(resource: Resource, obj: Obj) -> None:
    """Name, labels and annotations: 422 Invalid with the real server's words."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    causes: list[errors.Cause] = []
    problem = _name_error(resource, name)
    if problem:
        causes.append(errors.Cause("metadata.name", f'Invalid value: "{name}": {problem}'))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(errors.Cause("metadata.labels", "Invalid value: must be a map of strings"))
        labels = {}
    for key, value in labels.items():
        if not isinstance(value, str) or not selectors.LABEL_VALUE.match(value) or len(value) > 63:
            causes.append(
                errors.Cause(
                    "metadata.labels", f"Invalid value: {json.dumps(value)}: {_LABEL_VALUE_TEXT}"
                )
            )
        if not selectors.LABEL_KEY.match(str(key)):
            causes.append(
                errors.Cause(
                    "metadata.labels",
                    f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                    "'-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict):
        size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
        if size > _MAX_ANNOTATIONS:
            causes.append(
                errors.Cause(
                    "metadata.annotations",
                    f"Too long: may not be more than {_MAX_ANNOTATIONS} bytes",
                    "FieldValueTooLong",
                )
            )
    if causes:
        raise errors.invalid(resource.kind, resource.group, name, causes)


def require_name(resource: Resource) -> errors.ApiError:
    return errors.invalid(
        resource.kind,
        resource.group,
        "",
        [
            errors.Cause(
                "metadata.name",
                "Required value: name or generateName is required",
                "FieldValueRequired",
            )
        ],
    )


def meta_of(obj: Obj) -> Obj:
    """``metadata``, or an empty map where a body has none (or not a map)."""
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def owner_uids(obj: Obj) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {str(r["uid"]) for r in refs if isinstance(r, dict) and r.get("uid")}


def spec_changed(old: Obj, new: Obj) -> bool:
    """Whether anything outside metadata and status changed (what bumps ``generation``)."""
    skip = ("metadata", "status", "apiVersion", "kind")
    return {k: v for k, v in old.items() if k not in skip} != {
        k: v for k, v in new.items() if k not in skip
    }
