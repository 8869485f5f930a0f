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

    def problem(self, text: str) -> Problem:
        return Problem(self.index, self.model, text)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an ensemble graph: the step at fault (its index in the config
    and its model; None for the ensemble as a whole) and what is wrong, in a sentence."""

    step: int | None
    model: str | None
    text: str

    def describe(self, ensemble: str) -> str:
        if self.step is None:
            return f"ensemble '{ensemble}': {self.text}"
        return f"ensemble '{ensemble}' step {self.step} (model '{self.model}'): {self.text}"


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
        """Check the graph against member configs; raises ModelLoadError naming each edge."""
        problems = self.problems(members)
        if problems:
            raise errors.ModelLoadError("; ".join(p.describe(self.name) for p in problems))

    def problems(self, members: Mapping[str, Any | None]) -> list[Problem]:
        """Everything wrong with the graph, each problem naming the step at fault.

        ``members`` maps each member's name to its config; ``None`` means the member exists
        but its tensors are not known yet (a config completed from the model file at load),
        so only the checks that need no tensor of it are made. The operator's admission
        calls this too: it is the one statement of the graph rules.
        """
        found: list[Problem] = []
        if self.config.max_batch_size < 0:
            found.append(Problem(None, None, "max_batch_size must be >= 0"))
        batched = self.config.max_batch_size > 0
        # tensor -> (producer description, datatype, shape); None where the producer's
        # tensors are unknown.
        produced: dict[str, tuple[str, int, list[int]] | None] = {
            t.name: (f"ensemble input '{t.name}'", t.data_type, _shape(t, batched))
            for t in self.config.input
        }
        for step in self.steps:
            found += self._step_problems(step, members, batched, produced)
        for step in self.steps:
            member = members.get(step.model)
            declared_in = {t.name: t for t in member.input} if member is not None else {}
            for member_input, tensor_name in step.input_map.items():
                if tensor_name not in produced:
                    found.append(
                        step.problem(
                            f"input '{member_input}' reads tensor '{tensor_name}', which no "
                            "ensemble input or step produces"
                        )
                    )
                    continue
                source = produced[tensor_name]
                want = declared_in.get(member_input)
                if source is None or want is None or member is None:
                    continue
                what, dtype, shape = source
                if dtype != want.data_type:
                    found.append(
                        step.problem(
                            f"input '{member_input}' is {_TYPES.Name(want.data_type)} but "
                            f"tensor '{tensor_name}' from {what} is {_TYPES.Name(dtype)}"
                        )
                    )
                    continue
                want_shape = _shape(want, member.max_batch_size > 0)
                if not _compatible(shape, want_shape):
                    found.append(
                        step.problem(
                            f"input '{member_input}' expects shape {want_shape} but tensor "
                            f"'{tensor_name}' from {what} has shape {shape}"
                        )
                    )
        for out in self.config.output:
            if out.name not in produced:
                found.append(Problem(None, None, f"output '{out.name}' is produced by no step"))
                continue
            source = produced[out.name]
            if source is not None and source[1] != out.data_type:
                found.append(
                    Problem(
                        None,
                        None,
                        f"output '{out.name}' is declared {_TYPES.Name(out.data_type)} but "
                        f"{source[0]} is {_TYPES.Name(source[1])}",
                    )
                )
        dangling = any("which no ensemble input or step produces" in p.text for p in found)
        if not dangling:  # a tensor nobody produces would look like a cycle
            try:
                self._order()
            except errors.ModelLoadError as exc:
                found.append(
                    Problem(None, None, str(exc).removeprefix(f"ensemble '{self.name}': "))
                )
        return found

    def _step_problems(
        self,
        step: Step,
        members: Mapping[str, Any | None],
        batched: bool,
        produced: dict[str, tuple[str, int, list[int]] | None],
    ) -> list[Problem]:
        """What is wrong with one step on its own; records the tensors it produces."""
        if step.model not in members:
            return [step.problem("no such model in the repository")]
        member = members[step.model]
        found: list[Problem] = []
        for tensor_name in step.output_map.values():
            if tensor_name in produced:
                previous = produced[tensor_name]
                by = previous[0] if previous is not None else "another step"
                found.append(step.problem(f"tensor '{tensor_name}' is already produced by {by}"))
        if member is None:
            produced.update({t: None for t in step.output_map.values() if t not in produced})
            return found
        if batched and member.max_batch_size == 0:
            found.append(
                step.problem(
                    f"the ensemble batches (max_batch_size {self.config.max_batch_size}) but "
                    "the member does not"
                )
            )
        elif batched and member.max_batch_size < self.config.max_batch_size:
            found.append(
                step.problem(
                    f"member max_batch_size {member.max_batch_size} is smaller than the "
                    f"ensemble's {self.config.max_batch_size}"
                )
            )
        declared_in = {t.name: t for t in member.input}
        declared_out = {t.name: t for t in member.output}
        for member_input in step.input_map:
            if member_input not in declared_in:
                found.append(
                    step.problem(
                        f"the model has no input '{member_input}' (its inputs: "
                        f"{', '.join(declared_in)})"
                    )
                )
        for required, tensor in declared_in.items():
            if required not in step.input_map and not tensor.optional:
                found.append(step.problem(f"model input '{required}' is not mapped"))
        for member_output, tensor_name in step.output_map.items():
            if member_output not in declared_out:
                found.append(
                    step.problem(
                        f"the model has no output '{member_output}' (its outputs: "
                        f"{', '.join(declared_out)})"
                    )
                )
                produced.setdefault(tensor_name, None)
                continue
            out = declared_out[member_output]
            produced.setdefault(
                tensor_name,
                (
                    f"output '{member_output}' of model '{step.model}'",
                    out.data_type,
                    _shape(out, member.max_batch_size > 0),
                ),
            )
        return found

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
