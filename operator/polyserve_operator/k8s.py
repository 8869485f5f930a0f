"""The one module that talks to the Kubernetes API (besides kopf's own watching).

Objects are plain dicts, written with server-side apply under our field manager (so
``managedFields`` shows what the operator owns and users' own fields are left alone), read
with GET and LIST. Label selectors are sent to the server *and* applied again here, so a
server that ignores them (an emulator) gives the same answer. Synchronous on purpose: kopf
runs synchronous handlers in its thread pool, off the event loop.

Every call is idempotent (apply with force, merge patches without a resourceVersion, GET,
LIST, DELETE by name), so a call the server refused for a passing reason (409, 429, 5xx, a
lost connection) is tried again a few times with jittered exponential back-off, a 429
waiting at least its ``Retry-After``; what still fails reaches the handler as ``ApiError``
(kopf retries the handler later). A write whose reply was lost and that did happen meets
itself when tried again: apply and patch change nothing more, DELETE finds it gone.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import urllib3

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
    "NetworkPolicy": "networkpolicies",
    "InferenceModel": "inferencemodels",
    "InferenceEnsemble": "inferenceensembles",
}


class ApiError(Exception):
    """The API server refused or could not be reached; ``status`` is the HTTP status or 0."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling, server faults and lost connections pass by themselves."""
        return self.status in (0, 409, 429) or self.status >= 500


@dataclass(frozen=True)
class Retries:
    """How a call refused for a passing reason is tried again: ``attempts`` in all, the
    first wait ``first`` seconds, doubling up to ``longest``, each drawn from its upper half
    (jitter, so clients refused together do not return together); a 429's ``Retry-After``
    is waited at least, up to ``longest``. The defaults give up after about 6 s: a handler
    blocks one of kopf's threads while it waits, and kopf retries the handler itself."""

    attempts: int = 5
    first: float = 0.25
    longest: float = 4.0

    def delay(self, attempt: int, retry_after: float | None, draw: float) -> float:
        """The wait after the ``attempt``-th failed try (1-based); ``draw`` in [0, 1)."""
        ceiling = min(self.longest, self.first * 2.0 ** (attempt - 1))
        wait = ceiling * (0.5 + draw / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.longest))
        return wait


NO_RETRIES = Retries(attempts=1)


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

    def __init__(
        self,
        config: Any,
        field_manager: str,
        *,
        retries: Retries = Retries(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # One retry policy, this client's: urllib3's own (3 tries, sleeping any Retry-After
        # in full) would multiply ours and hide the refusals from it.
        config.retries = urllib3.util.Retry(total=0, redirect=0, raise_on_status=False)
        self.configuration = config
        self.field_manager = field_manager
        self.retries = retries
        self._sleep = sleep
        self._random = random.Random()
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
        """One call, tried again while the server refuses it for a passing reason."""
        attempt = 1
        while True:
            try:
                return self._once(method, url, body=body, query=query, content_type=content_type)
            except ApiError as exc:
                if not exc.retryable or attempt >= self.retries.attempts:
                    raise
                wait = self.retries.delay(attempt, exc.retry_after, self._random.random())
                logger.debug(
                    "%s %s: %s (%d); trying again in %.2f s", method, url, exc, exc.status, wait
                )
                self._sleep(wait)
                attempt += 1

    def _once(
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
            raise ApiError(
                int(exc.status or 0),
                _reason(exc.body) or str(exc.reason),
                _retry_after(exc.headers),
            ) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # connection refused, reset
            raise ApiError(0, f"cannot reach the API server: {exc}") from exc
        status = int(response.status)
        text = response.data.decode() if response.data else ""
        if status == 404 and method == "GET":
            return None
        if status >= 400:
            raise ApiError(
                status,
                _reason(text) or f"HTTP {status} on {method} {url}",
                _retry_after(response.headers),
            )
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


def _retry_after(headers: Any) -> float | None:
    """A 429's ``Retry-After`` in seconds (the delta-seconds form the API server sends)."""
    value = (headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


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
