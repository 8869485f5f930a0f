"""Request mirroring: copy a sample of live requests to a canary, compare, count.

A canary that answers every request with 200 and the wrong numbers passes success-rate and
latency analysis. The stable worker is the one place that holds a live request and its
trusted answer together, so it copies a sample of its requests to the canary, compares the
two answers output by output (``comparing``) and exports the agreement as metrics, which a
rollout's analysis can hold to a threshold.

The client never waits for any of it. The dataplane calls ``Mirror.offer`` after the stable
answer exists: it samples (``percent``, then ``rate``), and puts references to the inputs
and outputs into the model's bounded queue with ``put_nowait``; a full queue drops the copy
and counts it. Background tasks (``IN_FLIGHT`` per model) send the copies with a grpc.aio
client (ModelInfer with raw contents, tritonclient's generated stub) and compare. A copy
holds references, not copies: request bodies are immutable bytes, JSON-decoded arrays and
outputs are fresh per request and nothing writes them after inference. The exception is an
input read in place from shared memory, which the client may overwrite as soon as it has
its answer: that one is copied, and only when the copy is admitted to the queue.

The settings come from a YAML file (``--mirror-config``, format in ``mirror_config``,
rendered by the operator into a ConfigMap) that is re-read every ``POLL_SECS`` and compared
by content (Kubernetes updates a mounted ConfigMap by swapping a symlink, so an mtime can
stay put): mirroring turns on, off or moves to another target without a restart, and a
file that does not parse keeps the previous settings. On SIGTERM ``halt`` drops the queues
at once (counted as dropped), so mirroring never holds up the drain.

This module knows numpy arrays and the protocol's gRPC messages as a client; not the
dataplane, the transports or the repository.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from polyserve_worker import clock as clocks
from polyserve_worker import comparing, errors, mirror_config, stats, tensors
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the settings file is read (seconds). A mounted ConfigMap changes within a
#: minute or so of its update; one second adds nothing noticeable to that.
POLL_SECS = 1.0
#: Copies one model sends at once: enough to keep up with an idle canary a network hop
#: away at thousands of requests per second, few enough to bound what a slow one holds.
IN_FLIGHT = 8
#: Most bytes of tensors one model's queue may hold (inputs and outputs); past it copies are
#: dropped as when the queue is full, so a queue of large requests cannot hold gigabytes.
MAX_QUEUED_BYTES = 256 * 1024 * 1024
#: Copies over this many bytes are encoded and compared on a thread, off the event loop.
OFFLOAD_BYTES = 256 * 1024

RESULTS = ("agree", "disagree", "error", "dropped")
#: Buckets of the largest absolute difference per copy; 0 is its own bucket (identical).
DIFF_BUCKETS = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # gRPC's reconnect backoff grows to two minutes while a target is down; a canary that
    # comes back (a restarted pod) should get copies again within a second.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
#: A canary's answer is decoded without the caps on client requests (it is our own kind).
_UNCAPPED = tensors.Limits(1 << 62, 1 << 62)


@dataclass
class Tally:
    """What mirroring one model to one revision has counted; outlives its route, so the
    counters never go back."""

    model: str
    revision: str
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    #: (output, "agree" | "disagree") -> copies
    outputs: dict[tuple[str, str], int] = field(default_factory=dict)
    max_abs_diff: dict[str, stats.Histogram] = field(default_factory=dict)
    latency: stats.Histogram = field(default_factory=lambda: stats.Histogram(stats.LATENCY_BUCKETS))
    #: Whether requests are being copied under these labels now.
    active: bool = False

    def output(self, name: str, verdict: comparing.Verdict) -> None:
        key = (name, "agree" if verdict.agree else "disagree")
        self.outputs[key] = self.outputs.get(key, 0) + 1
        if verdict.max_abs_diff is not None:
            if name not in self.max_abs_diff:
                self.max_abs_diff[name] = stats.Histogram(DIFF_BUCKETS)
            self.max_abs_diff[name].observe(verdict.max_abs_diff)


class Sampler:
    """Which requests are copied: ``percent`` of them at random, then at most ``rate`` per
    second (a token bucket holding one second's worth, at least one)."""

    def __init__(
        self, percent: float, rate: float | None, clock: clocks.Clock, rng: random.Random
    ) -> None:
        self.percent = percent
        self.rate = rate
        self._clock = clock
        self._rng = rng
        self._capacity = max(1.0, rate or 0.0)
        self._tokens = self._capacity
        self._filled_at = clock.now()

    def sampled(self) -> bool:
        """Whether this request is in the ``percent`` sample (not counted when it is not)."""
        return self.percent >= 100 or self._rng.random() * 100 < self.percent

    def take(self) -> bool:
        """A token for one copy; False when the copies are over the rate."""
        if self.rate is None:
            return True
        now = self._clock.now()
        self._tokens = min(self._capacity, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class Copy:
    inputs: dict[str, Array]
    outputs: dict[str, Array]
    nbytes: int


def _channel(spec: mirror_config.ModelMirror, own_ca: Path | None) -> grpc.aio.Channel:
    """The channel to the canary: plain gRPC, or TLS verified against the name the spec
    gives and a CA (read once: a route lives for one canary revision): the spec's file, else
    ``own_ca`` (the ``ca.crt`` beside this worker's own certificate: a Secret's layout, for
    both revisions serve the same one), else the public roots."""
    if spec.tls is None:
        return grpc.aio.insecure_channel(spec.target, options=_CHANNEL_OPTIONS)
    roots = None
    found = Path(spec.tls.ca_file) if spec.tls.ca_file is not None else own_ca
    if found is not None:
        try:
            roots = found.read_bytes()
        except FileNotFoundError:
            logger.info("mirror: %s not found; verifying with the public roots", found)
    return grpc.aio.secure_channel(
        spec.target,
        grpc.ssl_channel_credentials(root_certificates=roots),
        options=[*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", spec.tls.server_name)],
    )


class Route:
    """One mirrored model: its sampler, queue, sending tasks and channel to the target."""

    def __init__(
        self,
        model: str,
        spec: mirror_config.ModelMirror,
        tally: Tally,
        clock: clocks.Clock,
        rng: random.Random,
        own_ca: Path | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.tally = tally
        self._clock = clock
        self.sampler = Sampler(spec.percent, spec.rate, clock, rng)
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(spec.queue)
        self._queued_bytes = 0
        self._channel = _channel(spec, own_ca)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._failing = False
        self._disagreed = False
        self._tasks = [
            asyncio.create_task(self._send_loop(), name=f"mirror-{model}-{i}")
            for i in range(IN_FLIGHT)
        ]
        for task in self._tasks:
            task.add_done_callback(self._died)

    def offer(self, inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> None:
        if not self.sampler.sampled():
            return
        nbytes = sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outputs.values())
        if (
            self.queue.full()
            or self._queued_bytes + nbytes > MAX_QUEUED_BYTES
            or not self.sampler.take()
        ):
            self.tally.requests["dropped"] += 1
            return
        held = {name: _held(array) for name, array in inputs.items()}
        self.queue.put_nowait(Copy(held, dict(outputs), nbytes))
        self._queued_bytes += nbytes

    def halt(self) -> int:
        """Stop at once: the queued copies are dropped (counted; returned) and the sends
        cancelled (counted as dropped too)."""
        self.tally.active = False
        dropped = 0
        while not self.queue.empty():
            self.queue.get_nowait()
            dropped += 1
        self.tally.requests["dropped"] += dropped
        self._queued_bytes = 0
        for task in self._tasks:
            task.cancel()
        return dropped

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("mirroring task %s died", task.get_name(), exc_info=task.exception())

    async def _send_loop(self) -> None:
        while True:
            copy = await self.queue.get()
            self._queued_bytes -= copy.nbytes
            try:
                await self._send(copy)
            except asyncio.CancelledError:
                self.tally.requests["dropped"] += 1
                raise
            except Exception:
                # A fault of ours, not the canary's: count it, say it, keep mirroring.
                self.tally.requests["error"] += 1
                logger.exception("mirroring a request of '%s' failed", self.model)

    async def _send(self, copy: Copy) -> None:
        spec = self.spec
        request = await _offloaded(
            copy.nbytes, lambda: _request(spec.model or self.model, copy.inputs, copy.outputs)
        )
        start = self._clock.now()
        try:
            response = await self._stub.ModelInfer(request, timeout=spec.timeout_ms / 1000)
            elapsed = self._clock.now() - start
            answer = await _offloaded(copy.nbytes, lambda: _outputs_of(response))
        except (grpc.aio.AioRpcError, errors.PolyserveError) as exc:
            self.tally.requests["error"] += 1
            if not self._failing:
                self._failing = True
                logger.warning(
                    "mirroring '%s' to %s fails (%s); counting errors until it answers",
                    self.model,
                    spec.target,
                    _describe(exc),
                )
            return
        if self._failing:
            self._failing = False
            logger.info("mirroring '%s' to %s answers again", self.model, spec.target)
        self.tally.latency.observe(elapsed)
        verdicts = await _offloaded(copy.nbytes, lambda: _verdicts(spec, copy.outputs, answer))
        for name, verdict in verdicts.items():
            self.tally.output(name, verdict)
        disagreeing = {n: v.reason for n, v in verdicts.items() if not v.agree}
        self.tally.requests["disagree" if disagreeing else "agree"] += 1
        if disagreeing:
            level = logging.DEBUG if self._disagreed else logging.WARNING
            self._disagreed = True
            logger.log(
                level,
                "canary %s disagrees on '%s': %s",
                spec.target,
                self.model,
                "; ".join(f"{n}: {r}" for n, r in disagreeing.items()),
            )


class Mirror:
    """Every mirrored model of this worker; the dataplane's one entry point is ``offer``."""

    def __init__(
        self,
        clock: clocks.Clock | None = None,
        rng: random.Random | None = None,
        own_certificate: Path | None = None,
    ):
        """``own_certificate``: this worker's --tls-cert-file; a ``ca.crt`` beside it
        verifies canaries that serve TLS when their spec names no CA file."""
        self._clock = clock or clocks.MonotonicClock()
        self._rng = rng or random.Random()
        self._own_ca = own_certificate.parent / "ca.crt" if own_certificate else None
        self._routes: dict[str, Route] = {}
        self._tallies: dict[tuple[str, str], Tally] = {}
        self.config = mirror_config.MirrorConfig()
        self._halted = False

    def offer(self, model: str, inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> None:
        """A request to ``model`` and its stable answer, which may be copied; never waits."""
        route = self._routes.get(model)
        if route is not None:
            route.offer(inputs, outputs)

    def tallies(self) -> list[Tally]:
        return list(self._tallies.values())

    async def apply(self, config: mirror_config.MirrorConfig) -> None:
        """Mirror as ``config`` says: routes whose settings changed start afresh (their
        queued copies are dropped); the others keep running."""
        if self._halted:
            return
        unchanged = {
            name: route
            for name, route in self._routes.items()
            if config.models.get(name) == route.spec
        }
        gone = [route for name, route in self._routes.items() if name not in unchanged]
        for route in gone:
            route.halt()
        self._routes = {
            name: unchanged.get(name) or self._start(name, spec)
            for name, spec in config.models.items()
        }
        self.config = config
        await asyncio.gather(*(route.close() for route in gone))

    def _start(self, model: str, spec: mirror_config.ModelMirror) -> Route:
        key = (model, spec.revision)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = Tally(model, spec.revision)
        tally.active = True
        return Route(model, spec, tally, self._clock, self._rng, self._own_ca)

    async def watch(self, path: Path, interval: float = POLL_SECS) -> None:
        """Follow the settings file at ``path`` until cancelled (see the module docstring)."""
        last: bytes | None = None
        problem = ""
        first = True
        while True:
            try:
                content = await asyncio.to_thread(_read, path)
            except OSError as exc:
                if str(exc) != problem:
                    problem = str(exc)
                    logger.error(
                        "cannot read mirror config %s; keeping the settings: %s", path, exc
                    )
            else:
                problem = ""
                if first or content != last:
                    last, first, initial = content, False, first
                    try:
                        await self._reload(path, content, initial)
                    except Exception:  # a fault of ours: say it, keep following the file
                        logger.exception("applying mirror config %s failed", path)
            await self._clock.sleep(interval)

    async def _reload(self, path: Path, content: bytes | None, first: bool) -> None:
        if content is None:
            config = mirror_config.MirrorConfig()
        else:
            try:
                if len(content) > mirror_config.MAX_FILE_BYTES:
                    raise ValueError(f"larger than {mirror_config.MAX_FILE_BYTES} bytes")
                config = mirror_config.parse(content.decode())
            except ValueError as exc:
                logger.error(
                    "mirror config %s is invalid; keeping the previous settings: %s", path, exc
                )
                return
        if config == self.config and not first:
            return
        if not config.models:
            why = "absent" if content is None else "empty"
            logger.info("mirror config %s is %s: mirroring off", path, why)
        else:
            described = "; ".join(s.describe(m) for m, s in sorted(config.models.items()))
            logger.info("mirror config %s: mirroring %s", path, described)
        await self.apply(config)

    def halt(self) -> None:
        """Stop taking copies and drop what is queued (counted); ``close`` finishes."""
        if self._halted:
            return
        self._halted = True
        dropped = sum(route.halt() for route in self._routes.values())
        if self._routes:
            logger.info("mirroring stopped; %d queued copies dropped", dropped)

    async def close(self) -> None:
        self.halt()
        routes, self._routes = list(self._routes.values()), {}
        await asyncio.gather(*(route.close() for route in routes))


def _read(path: Path) -> bytes | None:
    """The file's content (at most one byte past the limit), or None when there is none."""
    try:
        with path.open("rb") as f:
            return f.read(mirror_config.MAX_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _held(array: Array) -> Array:
    """``array`` itself when nothing can write its memory after the request (immutable bytes
    of a request body, or an array the decoder allocated for this request); otherwise (a
    view of shared memory) a copy."""
    base: Any = array
    while True:
        if isinstance(base, np.ndarray):
            if base.base is None:
                return array
            base = base.base
        elif isinstance(base, memoryview):
            base = base.obj
        else:
            break
    return array if isinstance(base, bytes) else array.copy()


async def _offloaded(nbytes: int, work: Callable[[], T]) -> T:
    if nbytes > OFFLOAD_BYTES:
        return await asyncio.to_thread(work)
    return work()


def _request(model: str, inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> Any:
    """The copy as a ModelInferRequest asking for the outputs the stable answer has."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = tensors.datatype_of(array)
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(tensors.to_raw(array))
    for name in outputs:
        request.outputs.add().name = name
    return request


def _outputs_of(response: Any) -> dict[str, Array]:
    raw = response.raw_output_contents
    if len(raw) != len(response.outputs):
        raise errors.ServerError(
            f"the canary answered {len(response.outputs)} outputs with {len(raw)} "
            "raw_output_contents; mirroring reads raw contents only"
        )
    budget = tensors.Budget(_UNCAPPED)
    return {
        out.name: tensors.from_raw(out.name, raw[i], out.datatype, list(out.shape), budget)
        for i, out in enumerate(response.outputs)
    }


def _verdicts(
    spec: mirror_config.ModelMirror, stable: Mapping[str, Array], canary: Mapping[str, Array]
) -> dict[str, comparing.Verdict]:
    return {
        name: comparing.compare(array, canary[name], spec.rule_for(name))
        if name in canary
        else comparing.Verdict(False, reason="missing from the canary's answer")
        for name, array in stable.items()
    }


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
