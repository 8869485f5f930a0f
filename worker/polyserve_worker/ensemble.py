"""In-process pipelines across models and backends (Triton's ``platform: "ensemble"``).

An ensemble is a graph of steps; each step calls a member model with some ensemble tensors
and names its outputs as new ensemble tensors. Tensors stay numpy arrays in this process
and pass between steps by reference (no serialization, no copy). Steps whose inputs are
ready run concurrently, each through its member's own batcher, so ensemble traffic batches
with direct traffic to the same model. This module knows nothing about the repository:
it validates against the member configs it is given and calls members through an injected
function.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polyserve_worker import config as model_config
from polyserve_worker import errors
from polyserve_worker.tensors import Array

logger = logging.getLogger(__name__)

#: (member name, member version, inputs, requested outputs) -> outputs
MemberCall = Callable[
    [str, str, dict[str, Array], list[str]], Coroutine[Any, Any, dict[str, Array]]
]

_TYPES = model_config.model_config_pb2.DataType


@dataclass(frozen=True)
class Step:
    index: int
    model: str
    version: str  # "" means the member's latest ready version
    input_map: Mapping[str, str]  # member input -> ensemble tensor
    output_map: Mapping[str, str]  # member output -> ensemble tensor

    def where(self, ensemble: str) -> str:
        return f"ensemble '{ensemble}' step {self.index} (model '{self.model}')"


def is_ensemble(config: Any) -> bool:
    return bool(config.platform == "ensemble" or config.HasField("ensemble_scheduling"))


def _shape(tensor: Any, batched: bool) -> list[int]:
    dims = [int(d) for d in (tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)]
    return [-1, *dims] if batched else dims


def _compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


class Ensemble:
    """The validated graph of one ensemble config."""

    def __init__(self, config: Any) -> None:
        self.name: str = config.name
        self.config = config
        self.steps = [
            Step(
                index=i,
                model=s.model_name,
                version="" if s.model_version < 0 else str(s.model_version),
                input_map=dict(s.input_map),
                output_map=dict(s.output_map),
            )
            for i, s in enumerate(config.ensemble_scheduling.step)
        ]
        if not self.steps:
            raise errors.ModelLoadError(f"ensemble '{self.name}' has no steps")
        self.inputs = [t.name for t in config.input]
        self.outputs = [t.name for t in config.output]
        self._topological: list[Step] | None = None

    @property
    def members(self) -> list[str]:
        return sorted({s.model for s in self.steps})

    def validate(self, members: Mapping[str, Any]) -> None:
        """Check the graph against member configs; errors name the offending edge."""
        name = self.name
        if self.config.max_batch_size < 0:
            raise errors.ModelLoadError(f"ensemble '{name}': max_batch_size must be >= 0")
        batched = self.config.max_batch_size > 0
        # tensor -> (producer description, datatype, shape)
        produced: dict[str, tuple[str, int, list[int]]] = {
            t.name: (f"ensemble input '{t.name}'", t.data_type, _shape(t, batched))
            for t in self.config.input
        }
        for step in self.steps:
            member = members.get(step.model)
            if member is None:
                raise errors.ModelLoadError(f"{step.where(name)}: no such model in the repository")
            if batched and member.max_batch_size == 0:
                raise errors.ModelLoadError(
                    f"{step.where(name)}: the ensemble batches (max_batch_size "
                    f"{self.config.max_batch_size}) but the member does not"
                )
            if batched and member.max_batch_size < self.config.max_batch_size:
                raise errors.ModelLoadError(
                    f"{step.where(name)}: member max_batch_size {member.max_batch_size} is "
                    f"smaller than the ensemble's {self.config.max_batch_size}"
                )
            declared_in = {t.name: t for t in member.input}
            declared_out = {t.name: t for t in member.output}
            for member_input in step.input_map:
                if member_input not in declared_in:
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: input_map names '{member_input}', which the model "
                        f"does not have (its inputs: {', '.join(declared_in)})"
                    )
            for required, tensor in declared_in.items():
                if required not in step.input_map and not tensor.optional:
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: model input '{required}' is not mapped"
                    )
            for member_output, tensor_name in step.output_map.items():
                if member_output not in declared_out:
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: output_map names '{member_output}', which the "
                        f"model does not have (its outputs: {', '.join(declared_out)})"
                    )
                if tensor_name in produced:
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: tensor '{tensor_name}' is already produced by "
                        f"{produced[tensor_name][0]}"
                    )
                out = declared_out[member_output]
                produced[tensor_name] = (
                    f"{step.where(name)} output '{member_output}'",
                    out.data_type,
                    _shape(out, member.max_batch_size > 0),
                )
        for step in self.steps:
            member = members[step.model]
            declared_in = {t.name: t for t in member.input}
            for member_input, tensor_name in step.input_map.items():
                if tensor_name not in produced:
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: input '{member_input}' reads tensor "
                        f"'{tensor_name}', which no ensemble input or step produces"
                    )
                source, dtype, shape = produced[tensor_name]
                want = declared_in[member_input]
                if dtype != want.data_type:
                    want_type = _TYPES.Name(want.data_type)
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: input '{member_input}' is {want_type} but tensor "
                        f"'{tensor_name}' from {source} is {_TYPES.Name(dtype)}"
                    )
                want_shape = _shape(want, member.max_batch_size > 0)
                if not _compatible(shape, want_shape):
                    raise errors.ModelLoadError(
                        f"{step.where(name)}: input '{member_input}' expects shape {want_shape}"
                        f" but tensor '{tensor_name}' from {source} has shape {shape}"
                    )
        for out in self.config.output:
            if out.name not in produced:
                raise errors.ModelLoadError(
                    f"ensemble '{name}': output '{out.name}' is produced by no step"
                )
            source, dtype, _ = produced[out.name]
            if dtype != out.data_type:
                raise errors.ModelLoadError(
                    f"ensemble '{name}': output '{out.name}' is declared "
                    f"{_TYPES.Name(out.data_type)} but {source} is {_TYPES.Name(dtype)}"
                )
        self._order()  # raises on cycles

    def _order(self) -> list[Step]:
        """The steps in an order that respects the wiring (computed once; raises on cycles)."""
        if self._topological is None:
            self._topological = self._sort()
        return self._topological

    def _sort(self) -> list[Step]:
        available = set(self.inputs)
        remaining = list(self.steps)
        ordered: list[Step] = []
        while remaining:
            ready = [s for s in remaining if set(s.input_map.values()) <= available]
            if not ready:
                stuck = ", ".join(f"step {s.index} (model '{s.model}')" for s in remaining)
                raise errors.ModelLoadError(
                    f"ensemble '{self.name}': steps {stuck} wait on each other (a cycle)"
                )
            for step in ready:
                remaining.remove(step)
                ordered.append(step)
                available.update(step.output_map.values())
        return ordered

    def _needed(self, outputs: Sequence[str]) -> list[Step]:
        """Only the steps that contribute to the requested outputs."""
        wanted = set(outputs or self.outputs)
        needed: list[Step] = []
        for step in reversed(self._order()):
            if wanted & set(step.output_map.values()):
                needed.append(step)
                wanted.update(step.input_map.values())
        return list(reversed(needed))

    async def run(
        self,
        inputs: Mapping[str, Array],
        outputs: Sequence[str],
        call: MemberCall,
        timeout_s: float | None = None,
    ) -> dict[str, Array]:
        """Run the graph; any failing step fails the whole request, naming the step."""
        if timeout_s is None:
            return await self._run(inputs, outputs, call)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._run(inputs, outputs, call)
        except TimeoutError:
            raise errors.Unavailable(
                f"ensemble '{self.name}' did not finish within {timeout_s * 1e6:.0f} us"
            ) from None

    async def _run(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], call: MemberCall
    ) -> dict[str, Array]:
        pool: dict[str, Array] = dict(inputs)
        pending = self._needed(outputs)
        running: dict[asyncio.Task[dict[str, Array]], Step] = {}
        try:
            while pending or running:
                for step in [s for s in pending if set(s.input_map.values()) <= pool.keys()]:
                    pending.remove(step)
                    feed = {m: pool[t] for m, t in step.input_map.items()}
                    task = asyncio.create_task(
                        call(step.model, step.version, feed, list(step.output_map)),
                        name=f"ensemble:{self.name}:{step.index}",
                    )
                    running[task] = step
                if not running:
                    raise errors.ServerError(f"ensemble '{self.name}' cannot make progress")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    try:
                        produced = task.result()
                    except errors.PolyserveError as exc:
                        raise type(exc)(f"{step.where(self.name)}: {exc}") from exc
                    except Exception as exc:
                        raise errors.ServerError(f"{step.where(self.name)}: {exc}") from exc
                    for member_output, tensor_name in step.output_map.items():
                        pool[tensor_name] = produced[member_output]
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        names = list(outputs) or self.outputs
        return {n: pool[n] for n in names}
