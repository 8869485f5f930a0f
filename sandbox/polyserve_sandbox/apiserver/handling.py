"""What each HTTP request does (aiohttp): Kubernetes' REST paths, verbs, content types and
``Status`` errors, over plain HTTP with any bearer token accepted (``http`` serves it).

Paths: ``/api/v1/...`` and ``/apis/G/V/...``, ``namespaces/NS/...``, subresources
(``status``, ``scale``, ``log``, ``binding``), the legacy ``/watch/`` prefix, discovery,
``/openapi/v2`` and ``/openapi/v3``, ``/version`` and the health checks. Every verb: GET,
LIST, WATCH (``?watch=1``), POST, PUT, PATCH (merge, JSON, strategic, apply), DELETE with a
``DeleteOptions`` body, and deletecollection. Lists and watches answer as Tables when the
client asks (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``), as kubectl does.
Unknown fields under ``fieldValidation=Warn`` (the default) come back as ``Warning``
headers, which kubectl prints.

Bodies are JSON or YAML, and protobuf only as ``kubectl create <kind>`` sends it
(``protobuf``); answers are always JSON. Not served: RBAC and authentication (every request
is allowed), admission webhooks, aggregated API servers,
``exec``/``attach``/``port-forward``, and ``logs -f`` follows nothing (the log as it is).

Every request is counted (``metrics``, served at ``/metrics``), written to the audit log
when there is one (``auditing``), and a fault plan (``faults``, off by default;
``GET/PUT/DELETE /sandbox/faults``) may refuse it, lose its reply, or break its watch before
it is served.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from typing import Any

from aiohttp import web

from polyserve_sandbox.apiserver import (
    auditing,
    discovery,
    errors,
    faults,
    metrics,
    openapi,
    queries,
    selectors,
    tables,
    watching,
)
from polyserve_sandbox.apiserver.errors import ApiError
from polyserve_sandbox.apiserver.queries import Target
from polyserve_sandbox.apiserver.resources import Resource
from polyserve_sandbox.apiserver.store import Store

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

TABLE_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_HEALTH = ("/healthz", "/livez", "/readyz")
_SUCCESS = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
#: The sandbox's own endpoints: never counted, never refused.
METRICS_PATH = "/metrics"
FAULTS_PATH = "/sandbox/faults"
#: Where a request keeps what it asked for (``metrics.Request``), once its path is read.
_ASKED = web.RequestKey("polyserve.asked", metrics.Request)
_COUNTED = web.RequestKey("polyserve.counted", bool)
_TARGET = web.RequestKey("polyserve.target", Target)


def _json(obj: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": content_type})


def _error(exc: ApiError) -> web.Response:
    response = _json(exc.status_object(), exc.status)
    retry_after = exc.details.get("retryAfterSeconds")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _versioned(obj: Obj, resource: Resource) -> Obj:
    """The stored object as the requested version names it (one storage for all versions)."""
    if obj.get("apiVersion") == resource.api_version:
        return obj
    return {**obj, "apiVersion": resource.api_version}


class Handler:
    """One callable serving every path (routing by hand keeps a request's cost flat)."""

    def __init__(
        self,
        store: Store,
        *,
        bookmark_interval: float = 30.0,
        fault_plan: faults.FaultPlan | None = None,
        audit: auditing.AuditLog | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.bookmark_interval = bookmark_interval
        self.faults = faults.Faults(fault_plan)
        self.requests = metrics.Requests()
        self.watches: set[asyncio.Task[Any]] = set()
        self.closing = asyncio.Event()  # set when the server stops: open watches end
        self._openapi: tuple[int, dict[str, bytes]] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path == METRICS_PATH:
            return web.Response(
                text=metrics.exposition(self.requests, self.faults.injected),
                content_type="text/plain",
            )
        if path == FAULTS_PATH:
            return await self._fault_plan(request)
        began = time.perf_counter()
        try:
            response = await self._serve(request)
        except ApiError as exc:
            logger.debug("%s %s: %s", request.method, request.path_qs, exc.message)
            response = _error(exc)
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.path_qs)
            response = _error(ApiError(500, "InternalError", f"Internal error occurred: {exc}"))
        if not request.get(_COUNTED):  # a watch counted itself as it started
            asked = request.get(_ASKED) or metrics.Request("GET")
            self.requests.count(asked, response.status)
            self.requests.observe(asked, time.perf_counter() - began)
            self._audit(request, response.status)
        return response

    def _audit(self, request: web.Request, code: int) -> None:
        """One line of the audit log, when there is one (``auditing``)."""
        if self.audit is None:
            return
        asked, target = request.get(_ASKED), request.get(_TARGET)
        where: dict[str, Any] = {}
        if asked is not None and target is not None:
            where = {
                "verb": asked.verb,
                "group": asked.group,
                "version": asked.version,
                "resource": asked.resource,
                "subresource": asked.subresource,
                "namespace": target.namespace,
                "name": target.name,
            }
        self.audit.write(
            auditing.event(
                username=auditing.user(request.headers.get("Authorization")),
                method=request.method,
                uri=request.path_qs,
                code=code,
                **where,
            )
        )

    async def _fault_plan(self, request: web.Request) -> web.Response:
        """``GET``: the plan and what it injected; ``PUT``: a new plan (its generator
        seeded afresh); ``DELETE``: no faults."""
        if request.method == "PUT":
            try:
                plan = faults.FaultPlan.model_validate_json(await request.read())
            except ValueError as exc:
                return _error(errors.bad_request(f"not a fault plan: {exc}"))
            self.faults = faults.Faults(plan)
        elif request.method == "DELETE":
            self.faults = faults.Faults()
        elif request.method != "GET":
            return _error(errors.method_not_allowed())
        injected = [
            {"verb": verb, "resource": resource, "fault": fault, "count": count}
            for (verb, resource, fault), count in sorted(self.faults.injected.items())
        ]
        plan_document = self.faults.plan.model_dump(mode="json", by_alias=True)
        return _json({"plan": plan_document, "injected": injected})

    # -- routing -------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path == "/version":
            return _json(discovery.SERVER_VERSION)
        if path in _HEALTH:
            return web.Response(text="ok")
        if path.startswith("/openapi/"):
            return self._openapi_document(request, path)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            raise errors.unknown_resource()
        if parts[0] == "api":
            if len(parts) == 1:
                return self._discovery(request, core=True)
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return self._discovery(request, core=False)
            if len(parts) == 2:
                found = discovery.api_group(self.store.registry, parts[1])
                if found is None:
                    raise errors.unknown_resource()
                return _json(found)
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            listed = discovery.resource_list(self.store.registry, group, version)
            if listed is None:
                raise errors.unknown_resource()
            return _json(listed)
        target = queries.target(self.store.registry, group, version, rest)
        return await self._dispatch(request, target)

    async def _dispatch(self, request: web.Request, target: Target) -> web.StreamResponse:
        method = request.method
        query = request.query
        resource = target.resource
        named = target.name is not None
        verb = metrics.verb(
            method,
            named=named,
            watch=target.watch or queries.flag(query.get("watch")),
            apply=request.headers.get("Content-Type", "").startswith("application/apply-patch"),
        )
        request[_TARGET] = target
        request[_ASKED] = metrics.Request(
            verb,
            resource.group,
            resource.version,
            resource.plural,
            target.subresource or "",
            metrics.scope(named=named, namespace=target.namespace),
        )
        refusal = self.faults.refusal(
            verb, resource.plural, resource.group, target.subresource, target.name
        )
        if refusal is not None:
            raise refusal
        response = await self._verb(request, target)
        lost = self.faults.lost_reply(verb, resource.plural, target.subresource)
        if lost is not None and response.status < 400:
            raise lost
        return response

    async def _verb(self, request: web.Request, target: Target) -> web.StreamResponse:
        method = request.method
        query = request.query
        if method == "GET" and target.subresource != "binding":
            if target.name is None:
                if target.watch or queries.flag(query.get("watch")):
                    return await self._watch(request, target)
                return self._list(request, target)
            return self._get(request, target)
        if method == "POST":
            if target.name is None:
                return await self._create(request, target)
            if target.subresource == "binding":
                return await self._bind(request, target)
        writable = target.name is not None and target.subresource in (None, "status", "scale")
        if method == "PUT" and writable:
            return await self._replace(request, target)
        if method == "PATCH" and writable:
            return await self._patch(request, target)
        if method == "DELETE" and target.subresource is None:
            if target.name is None:
                return await self._delete_collection(request, target)
            return await self._delete(request, target)
        raise errors.method_not_allowed()

    # -- discovery and OpenAPI -----------------------------------------------------------

    def _discovery(self, request: web.Request, *, core: bool) -> web.Response:
        registry = self.store.registry
        if discovery.AGGREGATED in request.headers.get("Accept", ""):
            document = discovery.aggregated(registry, core=core)
            return _json(document, content_type=discovery.AGGREGATED)
        if core:
            return _json(discovery.api_versions(request.host))
        return _json(discovery.api_group_list(registry))

    def _openapi_document(self, request: web.Request, path: str) -> web.Response:
        if path == "/openapi/v2":
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(
                    body=openapi.v2_protobuf(), headers={"Content-Type": openapi.PROTOBUF_V2}
                )
            return _json(openapi.v2_json())
        registry = self.store.registry
        if self._openapi is None or self._openapi[0] != registry.generation:
            self._openapi = (registry.generation, openapi.documents(registry))
        documents = self._openapi[1]
        if path == "/openapi/v3":
            return _json(openapi.index(registry, documents))
        body = documents.get(path.removeprefix("/openapi/v3/"))
        if body is None:
            raise errors.unknown_resource()
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    # -- reads ---------------------------------------------------------------------------

    def _table(
        self, request: web.Request, target: Target, items: list[Obj], version: str
    ) -> web.Response:
        table = tables.table(
            target.resource,
            items,
            version=version,
            now=datetime.datetime.now(datetime.UTC),
            include_object=request.query.get("includeObject", "PartialObjectMetadata"),
        )
        return _json(table, content_type=TABLE_TYPE)

    def _get(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        resource = target.resource
        if target.subresource == "scale":
            return _json(
                self.store.get_scale(
                    resource.api_version, resource.kind, target.namespace, target.name
                )
            )
        if target.subresource == "log":
            return self._log(request, target)
        obj = _versioned(self.store.view(resource, target.namespace, target.name), resource)
        if queries.wants_table(request):
            return self._table(request, target, [obj], obj["metadata"]["resourceVersion"])
        return _json(obj)

    def _list(self, request: web.Request, target: Target) -> web.Response:
        resource = target.resource
        items, version = self.store.select(
            resource,
            target.namespace,
            label_selector=request.query.get("labelSelector") or None,
            field_selector=request.query.get("fieldSelector") or None,
        )
        items = [_versioned(item, resource) for item in items]
        if queries.wants_table(request):
            return self._table(request, target, items, str(version))
        return _json(
            {
                "kind": resource.list_kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(version)},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        resource = target.resource
        timeout: float | None = queries.integer(request, "timeoutSeconds")
        lifetime = self.faults.lifetime(resource.plural)
        if lifetime is not None:  # closed early, as by a restart or an idle timeout
            timeout = max(0.01, min(lifetime, timeout or lifetime))
        stream = watching.events(
            self.store,
            resource,
            target.namespace,
            label_selector=query.get("labelSelector") or None,
            field_selector=query.get("fieldSelector") or None,
            resource_version=query.get("resourceVersion"),
            send_initial_events=queries.flag(query.get("sendInitialEvents")),
            bookmarks=queries.flag(query.get("allowWatchBookmarks")),
            timeout_seconds=timeout,
            bookmark_interval=self.bookmark_interval,
            until=self.closing,
        )
        as_table = queries.wants_table(request)
        # Refuse a bad request (selectors, version) with a Status, before the stream starts.
        selectors.predicate(query.get("labelSelector") or None, query.get("fieldSelector") or None)
        version = query.get("resourceVersion")
        if version and not version.isdigit():
            raise errors.bad_request(f'invalid resource version "{version}"')
        response = web.StreamResponse(
            headers={"Content-Type": TABLE_TYPE if as_table else "application/json"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        # Counted as it starts (it may end only when the client goes, cancelled).
        self.requests.count(request[_ASKED], 200)
        self._audit(request, 200)
        request[_COUNTED] = True
        resuming = (
            bool(version) and version != "0" and not queries.flag(query.get("sendInitialEvents"))
        )
        if self.faults.expired(resource.plural, resuming):
            await stream.aclose()
            gone = errors.expired(int(str(version)), self.store.log.last + 1)
            line = json.dumps({"type": "ERROR", "object": gone.status_object()}) + "\n"
            await response.write(line.encode())
            await response.write_eof()
            return response
        task = asyncio.current_task()
        if task is not None:
            self.watches.add(task)
        try:
            async for kind, obj in stream:
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    obj = _versioned(obj, resource)
                    if as_table:
                        obj = tables.table(
                            resource,
                            [obj],
                            version=obj["metadata"]["resourceVersion"],
                            now=datetime.datetime.now(datetime.UTC),
                        )
                line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n"
                await response.write(line.encode())
        except ConnectionResetError:
            return response  # the client went
        finally:
            await stream.aclose()
            if task is not None:
                self.watches.discard(task)
        await response.write_eof()
        return response

    def _log(self, request: web.Request, target: Target) -> web.Response:
        assert target.namespace is not None and target.name is not None
        query = request.query
        body = self.store.read_log(
            target.namespace,
            target.name,
            query.get("container") or None,
            queries.flag(query.get("previous")),
            queries.integer(request, "tailLines"),
        )
        return web.Response(body=body, headers={"Content-Type": "text/plain"})

    # -- writes --------------------------------------------------------------------------

    def _exists(self, resource: Resource, namespace: str | None, name: str) -> bool:
        try:
            self.store.view(resource, namespace, name)
        except ApiError:
            return False
        return True

    @staticmethod
    def _written(obj: Obj, status: int, warnings: list[str]) -> web.Response:
        """The written object, and a ``Warning`` header per warning (kubectl prints them)."""
        response = _json(obj, status)
        for warning in dict.fromkeys(warnings):
            escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{escaped}"')
        return response

    async def _create(self, request: web.Request, target: Target) -> web.Response:
        body = await queries.body(request)
        options = queries.write_options(request)
        queries.typed(body, target.resource)
        warnings: list[str] = []
        created = self.store.create(
            body,
            dry_run=options.dry_run,
            field_manager=options.manager,
            namespace=target.namespace,
            field_validation=options.validation,
            warnings=warnings,
            share=True,
        )
        return self._written(created, 201, warnings)

    async def _replace(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        body = await queries.body(request)
        options = queries.write_options(request)
        resource = target.resource
        if target.subresource == "scale":
            if not isinstance(body, dict):
                raise errors.bad_request("the body of the request must be a Scale")
            scale = self.store.replace_scale(
                resource.api_version,
                resource.kind,
                target.namespace,
                target.name,
                body,
                dry_run=options.dry_run,
                field_manager=options.manager,
            )
            return _json(scale)
        queries.typed(body, resource)
        warnings: list[str] = []
        replaced = self.store.replace(
            body,
            subresource=target.subresource,
            dry_run=options.dry_run,
            field_manager=options.manager,
            namespace=target.namespace,
            name=target.name,
            field_validation=options.validation,
            warnings=warnings,
            share=True,
        )
        return self._written(replaced, 200, warnings)

    async def _patch(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        patch_type = queries.patch_type(request)
        body = await queries.body(request, yaml_ok=patch_type == "apply")
        options = queries.write_options(request)
        if patch_type == "apply" and not request.query.get("fieldManager"):
            raise errors.bad_request(
                "PATCH, application/apply-patch+yaml requests require fieldManager"
            )
        resource = target.resource
        existed = self._exists(resource, target.namespace, target.name)
        warnings: list[str] = []
        patched = self.store.patch(
            resource.api_version,
            resource.kind,
            target.namespace,
            target.name,
            body,
            patch_type=patch_type,
            field_manager=options.manager,
            force=queries.flag(request.query.get("force")),
            subresource=target.subresource,
            dry_run=options.dry_run,
            field_validation=options.validation,
            warnings=warnings,
            share=True,
        )
        created = not existed and not options.dry_run
        return self._written(patched, 201 if created else 200, warnings)

    async def _delete(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        options = await queries.delete_options(request)
        resource = target.resource
        last = self.store.delete(
            resource.api_version,
            resource.kind,
            target.namespace,
            target.name,
            propagation=options.propagation,
            grace_period_seconds=options.grace,
            preconditions=options.preconditions,
            dry_run=options.dry_run,
            share=True,
        )
        # 202 Accepted while finalizers or a grace period keep the object.
        pending = not options.dry_run and self._exists(resource, target.namespace, target.name)
        return _json(last, 202 if pending else 200)

    async def _delete_collection(self, request: web.Request, target: Target) -> web.Response:
        options = await queries.delete_options(request)
        resource = target.resource
        deleted = self.store.delete_collection(
            resource.api_version,
            resource.kind,
            target.namespace,
            label_selector=request.query.get("labelSelector") or None,
            field_selector=request.query.get("fieldSelector") or None,
            propagation=options.propagation,
            grace_period_seconds=options.grace,
            dry_run=options.dry_run,
        )
        listed = {
            "kind": resource.list_kind,
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(self.store.version)},
            "items": deleted,
        }
        return _json(listed)

    async def _bind(self, request: web.Request, target: Target) -> web.Response:
        assert target.namespace is not None and target.name is not None
        body = await queries.body(request)
        node = ((body or {}).get("target") or {}).get("name") if isinstance(body, dict) else None
        if not node:
            cause = errors.Cause("target.name", "Required value", "FieldValueRequired")
            raise errors.invalid("Binding", "", target.name, [cause])
        self.store.bind_pod(target.namespace, target.name, str(node))
        return _json(_SUCCESS, 201)
