"""The one module that talks to the Kubernetes API (besides kopf's own watching).

Objects are plain dicts, written with server-side apply under our field manager (so
``managedFields`` shows what the operator owns and users' own fields are left alone), read
with GET and LIST. Label selectors are sent to the server *and* applied again here, so a
server that ignores them (an emulator) gives the same answer. Synchronous on purpose: kopf
runs synchronous handlers in its thread pool, off the event loop.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import kubernetes

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

PLURALS = {
    "Namespace": "namespaces",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Secret": "secrets",
    "Deployment": "deployments",
    "ReplicaSet": "replicasets",
    "Gateway": "gateways",
    "HTTPRoute": "httproutes",
    "GRPCRoute": "grpcroutes",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Job": "jobs",
    "InferenceModel": "inferencemodels",
    "InferenceEnsemble": "inferenceensembles",
}


class ApiError(Exception):
    """The API server refused or could not be reached; ``status`` is the HTTP status or 0."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling, server faults and lost connections pass by themselves."""
        return self.status in (0, 409, 429) or self.status >= 500


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection or an object."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{PLURALS[kind]}"
    return f"{base}/{name}" if name else base


def configuration(kubeconfig: Path | None) -> Any:
    """Client configuration: the given kubeconfig, else in-cluster, else ~/.kube/config."""
    cfg = kubernetes.client.Configuration()
    if kubeconfig is not None:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]  # unannotated upstream
            config_file=str(kubeconfig), client_configuration=cfg
        )
        return cfg
    try:
        kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class Client:
    """A thin dict-in, dict-out client over ``kubernetes.client.ApiClient``."""

    def __init__(self, config: Any, field_manager: str) -> None:
        self.configuration = config
        self.field_manager = field_manager
        self._api = kubernetes.client.ApiClient(config)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]  # unannotated upstream

    def _call(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> Obj | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=url,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request)
            response.read()  # type: ignore[no-untyped-call]  # unannotated upstream
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError(int(exc.status or 0), _reason(exc.body) or str(exc.reason)) from exc
        except OSError as exc:  # urllib3's connection errors derive from it
            raise ApiError(0, f"cannot reach the API server: {exc}") from exc
        status = int(response.status)
        text = response.data.decode() if response.data else ""
        if status == 404 and method == "GET":
            return None
        if status >= 400:
            raise ApiError(status, _reason(text) or f"HTTP {status} on {method} {url}")
        result: Obj | None = json.loads(text) if text else None
        return result

    def apply(self, obj: Obj) -> Obj | None:
        """Server-side apply: create or update, owning exactly the fields in ``obj``."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        logger.debug("applying %s %s/%s", obj["kind"], meta.get("namespace"), meta["name"])
        return self._call(
            "PATCH",
            url,
            body=obj,
            query=[("fieldManager", self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
    ) -> Obj | None:
        """A JSON merge patch, optionally of a subresource such as ``status``."""
        url = path(api_version, kind, namespace, name)
        if subresource:
            url += f"/{subresource}"
        return self._call("PATCH", url, body=body, content_type="application/merge-patch+json")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """One object, or None when it does not exist."""
        return self._call("GET", path(api_version, kind, namespace, name))

    def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str]
    ) -> list[Obj]:
        """Objects in a namespace that carry all ``labels``."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self._call(
            "GET", path(api_version, kind, namespace), query=[("labelSelector", selector)]
        )
        items: list[Obj] = (found or {}).get("items") or []
        return [
            item
            for item in items
            if all(
                ((item.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in labels.items()
            )
        ]

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete one object; False when it was already gone."""
        try:
            self._call("DELETE", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _reason(text: Any) -> str | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return str(text)[:500]
    message = data.get("message") if isinstance(data, dict) else None
    return str(message) if message else str(text)[:500]


def connect(kubeconfig: Path | None, field_manager: str) -> Client:
    """A client for the cluster the kubeconfig (or the pod's service account) names."""
    return Client(configuration(kubeconfig), field_manager)
