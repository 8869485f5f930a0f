"""Faults the API server injects on purpose: a seeded random plan, off unless one is set.

A real control plane refuses requests now and then, and an operator must keep converging
through it. The plan says, per verb and resource, how often a request is answered

- 409 ``Conflict`` (another writer won the race),
- 429 ``TooManyRequests`` with ``Retry-After`` (API Priority and Fairness throttling),
- 500 ``InternalError`` before anything is done, or after the write committed
  (``lostReply``: the client cannot tell whether its write happened, as behind a timeout),

and how often a watch stream is closed early (an API server restart, a load balancer's idle
timeout) or, when resumed from a resourceVersion, answered 410 ``Expired`` (compaction).
Refused requests change nothing. Only resource requests are refused: discovery, OpenAPI,
``/version``, the health checks and the sandbox's own endpoints never are.

Set from ``sandbox.yaml`` (``faults:``), the ``POLYSERVE_SANDBOX_FAULTS`` variable (the same
document as JSON or YAML), ``ApiServer.faults`` in process, or ``PUT /sandbox/faults`` on a
running server (``DELETE`` turns them off)::

    faults:
      seed: 7
      rules:                      # the first rule matching verb and resource decides
      - {verbs: [POST, PUT, PATCH, APPLY, DELETE], conflict: 0.05, throttle: 0.05, error: 0.05}
      - {verbs: [GET, LIST], resources: ["pods", "deployments*"], error: 0.1}
      watches: {close: 0.3, closeWithinSeconds: 10, expire: 0.3}

Verbs are the real server's metric verbs (``GET LIST WATCH POST PUT PATCH APPLY DELETE
DELETECOLLECTION``), resources are globs over ``plural`` or ``plural/subresource``. One
random generator, seeded, draws every decision: the same requests in the same order meet
the same faults (concurrent clients interleave, so a run is reproducible in distribution).
No I/O here: ``handling`` asks, and serves what it is told.
"""

from __future__ import annotations

import collections
import fnmatch
import random

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from polyserve_sandbox.apiserver import errors
from polyserve_sandbox.apiserver.errors import ApiError

VERBS = ("GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
WRITES = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Rule(_Model):
    """How often requests of these verbs on these resources are refused, and how."""

    verbs: list[str] = Field(default_factory=lambda: ["*"], description="Metric verbs, or *.")
    resources: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Globs over `plural` or `plural/subresource` (`pods`, `*/status`, `*`).",
    )
    conflict: float = Field(default=0.0, ge=0, le=1, description="Share answered 409.")
    throttle: float = Field(default=0.0, ge=0, le=1, description="Share answered 429.")
    error: float = Field(default=0.0, ge=0, le=1, description="Share answered 500 up front.")
    lost_reply: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of writes carried out, then answered 500 (the reply is lost).",
    )
    retry_after_seconds: int = Field(
        default=1, ge=0, description="The Retry-After of a 429, in seconds."
    )

    @model_validator(mode="after")
    def _shares_fit(self) -> Rule:
        if self.conflict + self.throttle + self.error > 1:
            raise ValueError("conflict + throttle + error must not exceed 1")
        unknown = [v for v in self.verbs if v != "*" and v not in VERBS]
        if unknown:
            raise ValueError(f"unknown verbs {unknown}: use {', '.join(VERBS)} or *")
        return self

    def matches(self, verb: str, resource: str) -> bool:
        return ("*" in self.verbs or verb in self.verbs) and any(
            fnmatch.fnmatchcase(resource, pattern) for pattern in self.resources
        )


class WatchFaults(_Model):
    """How watch streams break."""

    resources: list[str] = Field(default_factory=lambda: ["*"], description="Globs over plurals.")
    close: float = Field(default=0.0, ge=0, le=1, description="Share of watches closed early.")
    close_within_seconds: float = Field(
        default=10.0, gt=0, description="A closed watch ends at a random time within this."
    )
    expire: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of watches resumed from a resourceVersion answered 410 Expired.",
    )

    def matches(self, resource: str) -> bool:
        return any(fnmatch.fnmatchcase(resource, pattern) for pattern in self.resources)


class FaultPlan(_Model):
    """The whole plan: a seed, request rules, watch faults."""

    seed: int = Field(default=0, description="Seeds the one random generator of every draw.")
    rules: list[Rule] = Field(default_factory=list)
    watches: WatchFaults = Field(default_factory=WatchFaults)


def resource_key(plural: str, subresource: str | None) -> str:
    """What rules match against: ``plural`` or ``plural/subresource``."""
    return f"{plural}/{subresource}" if subresource else plural


class Faults:
    """A plan at work: its random generator, and what it injected so far (by verb,
    resource and answer) for ``/metrics``."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan or FaultPlan()
        self._random = random.Random(self.plan.seed)
        self.injected: collections.Counter[tuple[str, str, str]] = collections.Counter()

    @property
    def active(self) -> bool:
        return bool(self.plan.rules) or self.plan.watches.close > 0 or self.plan.watches.expire > 0

    def _rule(self, verb: str, resource: str) -> Rule | None:
        return next((r for r in self.plan.rules if r.matches(verb, resource)), None)

    def refusal(
        self, verb: str, plural: str, group: str, subresource: str | None, name: str | None
    ) -> ApiError | None:
        """The error to answer instead of serving the request, or None to serve it."""
        resource = resource_key(plural, subresource)
        rule = self._rule(verb, resource)
        if rule is None or rule.conflict + rule.throttle + rule.error == 0:
            return None
        draw = self._random.random()
        if draw < rule.conflict:
            self.injected[(verb, resource, "409")] += 1
            return errors.conflict(plural, group, name or "")
        if draw < rule.conflict + rule.throttle:
            self.injected[(verb, resource, "429")] += 1
            return too_many_requests(rule.retry_after_seconds)
        if draw < rule.conflict + rule.throttle + rule.error:
            self.injected[(verb, resource, "500")] += 1
            return internal_error()
        return None

    def lost_reply(self, verb: str, plural: str, subresource: str | None) -> ApiError | None:
        """After a write committed: the 500 that hides it, or None to answer truly."""
        if verb not in WRITES:
            return None
        resource = resource_key(plural, subresource)
        rule = self._rule(verb, resource)
        if rule is None or rule.lost_reply == 0 or self._random.random() >= rule.lost_reply:
            return None
        self.injected[(verb, resource, "lost")] += 1
        return internal_error()

    def expired(self, plural: str, resuming: bool) -> bool:
        """Whether a watch resumed from a resourceVersion is answered 410 Expired."""
        watches = self.plan.watches
        if not resuming or watches.expire == 0 or not watches.matches(plural):
            return False
        if self._random.random() >= watches.expire:
            return False
        self.injected[("WATCH", plural, "410")] += 1
        return True

    def lifetime(self, plural: str) -> float | None:
        """Seconds after which a new watch is closed early, or None to let it run."""
        watches = self.plan.watches
        if watches.close == 0 or not watches.matches(plural):
            return None
        if self._random.random() >= watches.close:
            return None
        self.injected[("WATCH", plural, "closed")] += 1
        return self._random.uniform(0.0, watches.close_within_seconds)


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        {"retryAfterSeconds": retry_after},
    )


def internal_error() -> ApiError:
    return ApiError(500, "InternalError", "Internal error occurred: etcdserver: request timed out")
