"""The transport-neutral core: health, metadata, inference, statistics and repository calls.

REST and gRPC decode their wire formats into numpy arrays and call this module; it
validates requests against the model config, runs them through the model's batcher and
records statistics. It raises ``errors`` only: no HTTP or gRPC codes here.

A transport decodes a request body only after ``require`` has found the model, through
``decode``: that gives the decoder the request's ``tensors.Budget`` (shapes checked against
the model and the caps before anything is allocated), moves large bodies off the event loop,
and counts a request the model refuses as a failure, as Triton does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from polyserve_worker import (
    __version__,
    backends,
    errors,
    mirroring,
    repository,
    shm,
    stats,
    tensors,
)
from polyserve_worker import config as model_config
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
)

_DATA_TYPES = model_config.model_config_pb2.DataType

#: Bodies above this many bytes are decoded on a worker thread, so that one large request
#: never holds up the event loop (health checks, other clients) for the whole decode: JSON
#: decodes at roughly 50-100 MB/s, so 256 KiB is a few milliseconds on the loop at most.
OFFLOAD_BYTES = 256 * 1024

T = TypeVar("T")


class Activity:
    """The requests the transports are handling, so a drain can tell when they have gone
    quiet: ``with core.activity:`` around each request."""

    def __init__(self) -> None:
        self.in_progress = 0
        self.last_finished = time.monotonic()

    def __enter__(self) -> None:
        self.in_progress += 1

    def __exit__(self, *exc_info: object) -> None:
        self.in_progress -= 1
        self.last_finished = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request finished; 0 while one is in progress."""
        if self.in_progress:
            return 0.0
        return time.monotonic() - self.last_finished


@dataclass
class InferResult:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, Array]
    parameters: dict[str, Any] = field(default_factory=dict)


class DataPlane:
    def __init__(
        self,
        repo: repository.Repository,
        *,
        strict_readiness: bool = True,
        control_mode: str = "none",
        server_name: str = "polyserve",
        shared_memory: shm.Registry | None = None,
        limits: tensors.Limits | None = None,
        mirror: mirroring.Mirror | None = None,
    ) -> None:
        self.repository = repo
        self.shm = shared_memory or shm.Registry(enabled=False)
        self.strict_readiness = strict_readiness
        self.control_mode = control_mode
        self.server_name = server_name
        self.limits = limits or tensors.Limits()
        #: Where successful requests are offered for copying to a canary (``mirroring``).
        self.mirroring = mirror or mirroring.Mirror()
        #: Models whose readiness is the server's readiness; loading others never flips it.
        self.required: set[str] = set()
        self.started = False
        #: Set on SIGTERM: readiness turns false at once, while requests that still arrive
        #: on open connections are served (their clients could not have known).
        self.draining = False
        #: Set when the drain is over: open streams stop taking requests.
        self.stopping = asyncio.Event()
        #: With ``--workers N``: the other processes' statistics of (name, version), each a
        #: list of the extension's dicts (a process that does not answer is left out).
        self.peer_statistics: Callable[[str, str], Awaitable[list[list[dict[str, Any]]]]] | None = (
            None
        )
        self.activity = Activity()
        #: Each served model's ``_Declared``, by name and version; rebuilt when a reload
        #: brings a new config (at most one per model name ever loaded).
        self._declarations: dict[tuple[str, str], _Declared] = {}

    # -- health and metadata -------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self.started or self.draining:
            return False
        if not self.strict_readiness:
            return True
        return all(self.repository.is_ready(name) for name in self.required)

    def server_metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shm.enabled:
            extensions += ["system_shared_memory", "cuda_shared_memory"]
        return {"name": self.server_name, "version": __version__, "extensions": sorted(extensions)}

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model can take requests; an unknown model or a name that is no model
        name raises (404, 400) rather than answering not ready."""
        try:
            self.repository.resolve(name, version)
        except errors.Unavailable:
            return False
        return True

    def model_config(self, name: str, version: str = "") -> Any:
        return self.repository.resolve(name, version).config

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        served = self.repository.resolve(name, version)
        entry = self.repository.entry(name)
        config = served.config
        return {
            "name": name,
            "versions": [str(v) for v in sorted(entry.versions)],
            "platform": config.platform or backends.platform_of(config.backend),
            "inputs": [self._tensor_metadata(t, config) for t in config.input],
            "outputs": [self._tensor_metadata(t, config) for t in config.output],
        }

    @staticmethod
    def _tensor_metadata(tensor: Any, config: Any) -> dict[str, Any]:
        dims = [int(d) for d in tensor.dims]
        return {
            "name": tensor.name,
            "datatype": tensors.wire_datatype(_DATA_TYPES.Name(tensor.data_type)),
            "shape": [-1, *dims] if config.max_batch_size > 0 else dims,
        }

    # -- inference -----------------------------------------------------------------------

    def require(self, name: str, version: str = "") -> repository.ServedVersion:
        """The version a request goes to; fails fast, before a body is decoded, when the model
        cannot take requests."""
        return self.repository.resolve(name, version)

    async def decode(
        self, served: repository.ServedVersion, size: int, decoder: Callable[[tensors.Budget], T]
    ) -> T:
        """Run a transport's ``decoder`` for a request to ``served``.

        The decoder gets the request's budget, which checks each input against the model and
        the caps before it is allocated. Bodies over ``OFFLOAD_BYTES`` decode on a thread. A
        refused request counts as a failure of the model, as Triton counts it."""
        budget = tensors.Budget(self.limits, self._declared(served).check_input)
        start = time.perf_counter_ns()
        try:
            if size > OFFLOAD_BYTES:
                return await asyncio.to_thread(decoder, budget)
            return decoder(budget)
        except Exception:
            served.stats.record_request(False, time.perf_counter_ns() - start)
            raise

    async def encode(self, result: InferResult, encoder: Callable[[], T]) -> T:
        """Run a transport's response ``encoder``; large results encode on a thread (BYTES
        tensors serialize element by element in Python)."""
        if sum(array.nbytes for array in result.outputs.values()) > OFFLOAD_BYTES:
            return await asyncio.to_thread(encoder)
        return encoder()

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, Array],
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Any] | None = None,
        request_id: str = "",
        *,
        mirror: bool = True,
    ) -> InferResult:
        """Run one request. A successful one is offered to the mirror (which only takes
        references and never waits) unless ``mirror`` is False: the transports say so for
        requests whose outputs go to shared memory, which a copy could not compare."""
        served = self.repository.resolve(name, version)
        params = parameters or {}
        produced = await self._submit(served, inputs, outputs, params, log_failures=True)
        ordered = self._declared(served).in_output_order(produced)
        if mirror:
            self.mirroring.offer(name, inputs, ordered)
        return InferResult(name, served.version, request_id, ordered)

    async def _submit(
        self,
        served: repository.ServedVersion,
        inputs: Mapping[str, Array],
        outputs: Sequence[str],
        params: Mapping[str, Any],
        log_failures: bool,
    ) -> dict[str, Array]:
        """Validate and run one request on one model version (or ensemble), with statistics.

        A request the model refuses (shape, datatype, batch size, parameters) counts as a
        failure too, as in Triton's nv_inference_request_failure."""
        start = time.perf_counter_ns()
        try:
            declared = self._declared(served)
            model_inputs, batch_size = declared.validate_inputs(inputs)
            declared.validate_outputs(outputs)
            priority = _int_parameter(params, "priority", 0)
            timeout = _int_parameter(params, "timeout", -1)
            if served.ensemble is not None:
                produced = await self._run_ensemble(
                    served, model_inputs, outputs, priority, timeout
                )
                served.stats.record_execution(batch_size, 1, 0, time.perf_counter_ns() - start, 0)
            else:
                assert served.batcher is not None
                produced = await served.batcher.submit(
                    model_inputs,
                    outputs,
                    batch_size,
                    priority=priority,
                    timeout_us=timeout if timeout >= 0 else None,
                )
        except BaseException as exc:
            served.stats.record_request(False, time.perf_counter_ns() - start)
            if log_failures and isinstance(exc, errors.ServerError):
                logger.error("inference on '%s' failed: %s", served.name, exc)
            raise
        served.stats.record_request(True, time.perf_counter_ns() - start)
        return produced

    def _declared(self, served: repository.ServedVersion) -> _Declared:
        """What ``served``'s config declares, read once per loaded config."""
        key = (served.name, served.version)
        declared = self._declarations.get(key)
        if declared is None or declared.config is not served.config:
            declared = self._declarations[key] = _Declared(served.config)
        return declared

    async def _run_ensemble(
        self,
        served: repository.ServedVersion,
        inputs: dict[str, Array],
        outputs: Sequence[str],
        priority: int,
        timeout_us: int,
    ) -> dict[str, Array]:
        graph = served.ensemble
        assert graph is not None
        member_params = {"priority": priority} if priority else {}

        async def call_member(
            model: str, version: str, feed: dict[str, Array], wanted: list[str]
        ) -> dict[str, Array]:
            member = self.repository.resolve(model, version)
            return await self._submit(member, feed, wanted, member_params, log_failures=False)

        served.stats.pending += 1
        try:
            return await graph.run(
                inputs, outputs, call_member, timeout_us / 1e6 if timeout_us >= 0 else None
            )
        finally:
            served.stats.pending -= 1

    # -- statistics and repository -------------------------------------------------------

    def statistics(self, name: str = "", version: str = "") -> list[stats.ModelStats]:
        if not name:
            return [v.stats for v in self.repository.loaded()]
        if version:
            return [self.repository.resolve(name, version).stats]
        entry = self.repository.entry(name)
        return [v.stats for _, v in sorted(entry.versions.items())]

    async def statistics_of_pod(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """The statistics extension's answer: this process's, added up with the other
        ``--workers`` processes' (a client's connection reaches one of them, and perf_analyzer
        and Model Analyzer read the server's own latencies from here)."""
        own = [s.to_dict() for s in self.statistics(name, version)]
        if self.peer_statistics is None:
            return own
        return stats.merged([own, *await self.peer_statistics(name, version)])

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    async def load(
        self,
        name: str,
        config_json: str | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Load a model; ``config_json`` overrides its config, ``files`` its files."""
        self._check_explicit("load")
        override = model_config.parse_json(config_json) if config_json else None
        await self.repository.load(name, override, files)

    async def unload(self, name: str) -> None:
        self._check_explicit("unload")
        await self.repository.unload(name)

    def _check_explicit(self, action: str) -> None:
        if self.control_mode != "explicit":
            raise errors.Unsupported(
                f"cannot {action} models in '{self.control_mode}' model control mode; "
                "start the worker with --model-control-mode explicit"
            )


def _check_tensor(config: Any, tensor: Any, name: str, datatype: str, shape: list[int]) -> None:
    """One input's datatype, shape and batch size against its declaration."""
    expected_type = tensors.wire_datatype(_DATA_TYPES.Name(tensor.data_type))
    if datatype != expected_type:
        raise errors.InvalidArgument(
            f"input '{name}' of model '{config.name}' has datatype {datatype}, "
            f"expected {expected_type}"
        )
    batched = config.max_batch_size > 0
    dims = [int(d) for d in tensor.dims]
    expected = ([-1] if batched else []) + dims
    if len(shape) != len(expected) or any(
        e != -1 and e != s for e, s in zip(expected, shape, strict=False)
    ):
        hint = ""
        if batched and len(shape) == len(dims):
            hint = (
                f"; the model batches (max_batch_size {config.max_batch_size}), so the "
                f"first dimension is the batch size: send [1, {', '.join(map(str, shape))}] "
                "for one sample"
            )
        elif not batched and len(shape) == len(dims) + 1:
            hint = (
                "; the model does not batch (max_batch_size 0), so dims already hold the full shape"
            )
        raise errors.InvalidArgument(
            f"input '{name}' of model '{config.name}' expects shape {expected}, got {shape}{hint}"
        )
    if batched and (shape[0] < 1 or shape[0] > config.max_batch_size):
        raise errors.InvalidArgument(
            f"input '{name}' of model '{config.name}': batch size {shape[0]} is "
            f"outside 1..{config.max_batch_size} (max_batch_size); split the request"
        )


#: Request signatures a ``_Declared`` remembers as valid; past this many it forgets them all
#: (one ``clear``, which is safe while a decode on a worker thread checks an input).
MEMO_SIZE = 256

#: What a request's validation depends on: each input's name, numpy dtype and shape, in order.
_Signature = tuple[tuple[str, Any, tuple[int, ...]], ...]


class _Declared:
    """The inputs and outputs one model config declares, read once, and the request
    signatures already found valid against them.

    Validation depends only on the config and each input's name, datatype and shape, so a
    signature that passed once passes again, and a repeat skips the checks. Only successes
    are remembered: a refused request is checked in full every time and fails as it would
    have. A reload brings a new config, hence a new ``_Declared``."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.inputs = {t.name: t for t in config.input}
        # A set built as before, so that error messages list the outputs in the same order.
        self.outputs = {t.name for t in config.output}
        self.output_order = [t.name for t in config.output]
        self.reshapes = {
            t.name: [int(d) for d in t.reshape.shape] for t in config.input if t.HasField("reshape")
        }
        self._inputs_checked: dict[tuple[str, str, tuple[int, ...]], None] = {}
        self._requests_checked: dict[_Signature, int] = {}

    def check_input(self, name: str, datatype: str, dims: tuple[int, ...]) -> None:
        """One input, before its data is decoded (a ``tensors.InputCheck``)."""
        key = (name, datatype, dims)
        if key in self._inputs_checked:
            return
        tensor = self.inputs.get(name)
        if tensor is None:
            raise errors.InvalidArgument(
                f"model '{self.config.name}' has no input named {name!r}; "
                f"its inputs are {', '.join(repr(n) for n in self.inputs)}"
            )
        _check_tensor(self.config, tensor, name, datatype, list(dims))
        _remember(self._inputs_checked, key, None)

    def validate_inputs(self, inputs: Mapping[str, Array]) -> tuple[dict[str, Array], int]:
        """Check every input; returns the inputs (reshaped where the config says) and the
        request's batch size."""
        signature = tuple([(name, array.dtype, array.shape) for name, array in inputs.items()])
        batch_size = self._requests_checked.get(signature)
        if batch_size is None:
            result, batch_size = _validate_inputs(self.config, self.inputs, inputs)
            _remember(self._requests_checked, signature, batch_size)
            return result, batch_size
        if not self.reshapes:
            return dict(inputs), batch_size
        return {name: self._reshaped(name, array) for name, array in inputs.items()}, batch_size

    def _reshaped(self, name: str, array: Array) -> Array:
        target = self.reshapes.get(name)
        if target is None:
            return array
        lead = [array.shape[0]] if self.config.max_batch_size > 0 else []
        return array.reshape([*lead, *target])

    def in_output_order(self, produced: Mapping[str, Array]) -> dict[str, Array]:
        """``produced`` in the config's order of outputs, any it does not declare last."""
        ordered = {name: produced[name] for name in self.output_order if name in produced}
        if len(ordered) != len(produced):
            for extra in produced.keys() - ordered.keys():
                ordered[extra] = produced[extra]
        return ordered

    def validate_outputs(self, outputs: Sequence[str]) -> None:
        unknown = [o for o in outputs if o not in self.outputs]
        if unknown:
            raise errors.InvalidArgument(
                f"model '{self.config.name}' has no output named "
                f"{', '.join(repr(u) for u in unknown)}; "
                f"its outputs are {', '.join(repr(n) for n in self.outputs)}"
            )


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


def _validate_inputs(
    config: Any, declared: Mapping[str, Any], inputs: Mapping[str, Array]
) -> tuple[dict[str, Array], int]:
    """Check every input against the config; returns the inputs and the request's batch size."""
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise errors.InvalidArgument(
            f"model '{config.name}' has no input named {', '.join(repr(u) for u in unknown)}; "
            f"its inputs are {', '.join(repr(n) for n in declared)}"
        )
    missing = [n for n, t in declared.items() if n not in inputs and not t.optional]
    if missing:
        raise errors.InvalidArgument(
            f"model '{config.name}' expects input(s) {', '.join(repr(m) for m in missing)}, "
            "which the request does not have"
        )
    batched = config.max_batch_size > 0
    batch_size = 1
    sizes: dict[str, int] = {}
    result: dict[str, Array] = {}
    for name, array in inputs.items():
        tensor = declared[name]
        shape = list(array.shape)
        _check_tensor(config, tensor, name, tensors.datatype_of(array), shape)
        if batched:
            sizes[name] = shape[0]
        if tensor.HasField("reshape"):
            lead = [shape[0]] if batched else []
            array = array.reshape([*lead, *[int(d) for d in tensor.reshape.shape]])
        result[name] = array
    if batched and sizes:
        if len(set(sizes.values())) > 1:
            raise errors.InvalidArgument(
                f"model '{config.name}': inputs disagree on the batch size: "
                + ", ".join(f"{n}={s}" for n, s in sizes.items())
            )
        batch_size = next(iter(sizes.values()))
    return result, batch_size


def _int_parameter(params: Mapping[str, Any], key: str, default: int) -> int:
    """An integer request parameter (``priority``, ``timeout``): an integer, an integral
    finite number, or its decimal text; anything else is the client's mistake."""
    if key not in params:
        return default
    value = params[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise errors.InvalidArgument(f"parameter '{key}' must be an integer, got {value!r}")
