"""The write path of the store: create, update (PUT and the classic patches) and
server-side apply, from a request to the object a commit stores.

Each write works on a private copy: the request's body is merged with what the server owns
(uid, timestamps, status on a main-resource write, the spec on a ``status`` write), the
kind's strategy and the CRD's schema run, then admission, ``generation`` and the field
managers. A write that changes nothing returns the stored object and commits nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from polyserve_sandbox.apiserver import (
    applying,
    collecting,
    crds,
    errors,
    indexes,
    objects,
    patching,
    schemas,
    strategies,
)
from polyserve_sandbox.apiserver.errors import ApiError
from polyserve_sandbox.apiserver.resources import Resource

Obj = dict[str, Any]
Admit = Callable[[str, Resource, Obj, Obj | None], None]


class Writer:
    def __init__(
        self,
        index: indexes.Index,
        collector: collecting.Collector,
        commit: collecting.Commit,
        now: Callable[[int], str],
        admit: Admit,
    ) -> None:
        self._index = index
        self._collector = collector
        self._commit = commit
        self._now = now
        self._admit = admit

    @staticmethod
    def place(resource: Resource, own: Any, requested: str | None) -> str:
        """The namespace of a written object: the request's and the body's must agree."""
        if not resource.namespaced:
            return ""
        if requested and own and own != requested:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        space = str(requested or own or "")
        if not space:
            raise errors.bad_request(
                f"a {resource.kind} is namespaced: metadata.namespace is required"
            )
        return space

    def check_version(self, resource: Resource, old: Obj, version: Any) -> None:
        """Optimistic concurrency: a resourceVersion in the request must be the current one."""
        if version and str(version) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.plural, resource.group, old["metadata"]["name"])

    def check_namespace(self, resource: Resource, space: str, name: str) -> None:
        if not resource.namespaced:
            return
        namespace = self._index.get(strategies.NAMESPACE, "", space)
        if namespace is None:
            raise errors.namespace_not_found(space)
        if namespace["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                resource.plural,
                resource.group,
                name,
                f"unable to create new content in namespace {space} because it is being terminated",
            )

    def create(
        self,
        resource: Resource,
        new: Obj,
        *,
        namespace: str | None,
        dry_run: bool,
        manager: str,
        strict: bool,
        warnings: list[str] | None,
        applied: bool = False,
    ) -> Obj:
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        space = self.place(resource, meta.get("namespace"), namespace)
        name = str(meta.get("name") or "")
        if not name:
            if not meta.get("generateName"):
                raise objects.require_name(resource)
            name = objects.generated_name(str(meta["generateName"]))
            while self._index.get(resource.storage, space, name) is not None:
                name = objects.generated_name(str(meta["generateName"]))
        self.check_namespace(resource, space, name)
        if self._index.get(resource.storage, space, name) is not None:
            raise errors.already_exists(resource.plural, resource.group, name)
        for field in objects.SERVER_METADATA:
            meta.pop(field, None)
        if not applied:
            meta.pop("managedFields", None)
        meta["name"] = name
        if resource.namespaced:
            meta["namespace"] = space
        else:
            meta.pop("namespace", None)
        new["apiVersion"], new["kind"] = resource.api_version, resource.kind
        strategies.prepare_create(resource, new)
        now = self._now(0)
        self.kind_rules(resource, new, None, None, strict, warnings, now)
        objects.validate_metadata(resource, new)
        self._admit("CREATE", resource, new, None)
        meta = new["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now
        meta["generation"] = 1
        if not applied:
            applying.record_update(
                None,
                new,
                manager=manager,
                api_version=resource.api_version,
                subresource=None,
                has_status=resource.has_status,
                now=now,
            )
        if not dry_run:
            self._commit(resource, "ADDED", new, None)
        return new

    def kind_rules(
        self,
        resource: Resource,
        new: Obj,
        old: Obj | None,
        subresource: str | None,
        strict: bool,
        warnings: list[str] | None,
        now: str,
    ) -> None:
        if resource.storage == strategies.CRD and subresource != "status":
            crds.validate(new)
            new["status"] = crds.status(new, (old or {}).get("status"), now)
            if old is None:
                finalizers = new["metadata"].setdefault("finalizers", [])
                if crds.CLEANUP_FINALIZER not in finalizers:
                    finalizers.append(crds.CLEANUP_FINALIZER)
        if resource.schema is not None:
            schemas.admit(resource, new, strict=strict, warnings=warnings, old=old)

    def patched(self, resource: Resource, old: Obj, body: Any, patch_type: str) -> Obj:
        working = objects.clone(old)
        if patch_type == "json":
            result = patching.json_patch(working, body)
        elif not isinstance(body, dict):
            raise errors.bad_request(
                "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        elif patch_type == "merge":
            result = patching.merge_patch(working, body)
        else:
            if resource.crd is not None:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for "
                    f"{resource.group}/{resource.version}, Kind={resource.kind} locally, "
                    "try --type merge",
                )
            result = patching.strategic_merge_patch(working, body)
        if not isinstance(result, dict):
            raise errors.bad_request("the patched object is not a JSON object")
        return result

    def compose(self, resource: Resource, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """The object a write of the main resource or of ``status`` proposes: the main
        resource keeps the old status and server-owned metadata, ``status`` changes only
        the status (and the ownership of its fields)."""
        if subresource == "status":
            working: Obj = objects.clone(old)
            if "status" in new:
                working["status"] = new["status"]
            else:
                working.pop("status", None)
            managed = (new.get("metadata") or {}).get("managedFields")
            if managed is not None:
                working["metadata"]["managedFields"] = managed
            return working
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        old_meta = old["metadata"]
        for field in (*objects.SERVER_METADATA, "name", "namespace"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if "managedFields" not in meta and "managedFields" in old_meta:
            meta["managedFields"] = objects.clone(old_meta["managedFields"])
        new["apiVersion"], new["kind"] = resource.api_version, resource.kind
        if resource.has_status:
            if "status" in old:
                new["status"] = objects.clone(old["status"])
            else:
                new.pop("status", None)
        return new

    def update(
        self,
        resource: Resource,
        old: Obj,
        new: Obj,
        *,
        subresource: str | None,
        manager: str,
        dry_run: bool,
        strict: bool,
        warnings: list[str] | None,
        operation: str = "Update",
    ) -> Obj:
        old_meta = old["metadata"]
        if subresource != "status":
            strategies.prepare_update(resource, new, old)
            added = set(new["metadata"].get("finalizers") or []) - set(
                old_meta.get("finalizers") or []
            )
            if old_meta.get("deletionTimestamp") and added:
                raise errors.invalid(
                    resource.kind,
                    resource.group,
                    old_meta["name"],
                    [
                        errors.Cause(
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being "
                            "deleted",
                            "FieldValueForbidden",
                        )
                    ],
                )
        now = self._now(0)
        self.kind_rules(resource, new, old, subresource, strict, warnings, now)
        objects.validate_metadata(resource, new)
        self._admit("UPDATE", resource, new, old)
        meta = new["metadata"]
        generation = int(old_meta.get("generation") or 1)
        meta["generation"] = generation + 1 if objects.spec_changed(old, new) else generation
        if operation == "Update":
            applying.record_update(
                old,
                new,
                manager=manager,
                api_version=resource.api_version,
                subresource=subresource,
                has_status=resource.has_status,
                now=now,
            )
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return old  # a no-op: nothing is committed, the version stays
        gone = (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        )
        if dry_run:
            return new
        if gone:  # the last finalizer went: the object goes
            return self._collector.remove(resource, new)
        return self._commit(resource, "MODIFIED", new, old)

    def apply(
        self,
        resource: Resource,
        space: str,
        name: str,
        old: Obj | None,
        config: Any,
        manager: str,
        force: bool,
        subresource: str | None,
        dry_run: bool,
        strict: bool,
        warnings: list[str] | None,
    ) -> Obj:
        if not isinstance(config, dict):
            raise errors.bad_request("the apply configuration must be an object")
        if config.get("apiVersion") != resource.api_version or config.get("kind") != resource.kind:
            raise errors.bad_request(
                f"the apply configuration's apiVersion and kind ({config.get('apiVersion')}, "
                f"{config.get('kind')}) do not match the request "
                f"({resource.api_version}, {resource.kind})"
            )
        meta = objects.meta_of(config)
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if strict and resource.schema is not None:
            unknown = schemas.unknown_fields(resource, config)
            if unknown:
                raise errors.strict_decoding(resource.kind, resource.version, unknown)
        now = self._now(0)
        if old is None:
            if subresource:
                raise resource.not_found(name)
            live: Obj = {
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": {"name": name},
            }
            if resource.namespaced:
                live["metadata"]["namespace"] = space
            new = applying.apply(
                live,
                config,
                resource=resource,
                manager=manager,
                force=force,
                subresource=None,
                now=now,
            )
            return self.create(
                resource,
                new,
                namespace=space or None,
                dry_run=dry_run,
                manager=manager,
                strict=False,
                warnings=warnings,
                applied=True,
            )
        self.check_version(resource, old, meta.get("resourceVersion"))
        working = applying.apply(
            objects.clone(old),
            config,
            resource=resource,
            manager=manager,
            force=force,
            subresource=subresource,
            now=now,
        )
        working = self.compose(resource, old, working, subresource)
        return self.update(
            resource,
            old,
            working,
            subresource=subresource,
            manager=manager,
            dry_run=dry_run,
            strict=False,
            warnings=warnings,
            operation="Apply",
        )
