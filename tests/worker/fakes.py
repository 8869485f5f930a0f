"""Small honest fake backends for tests that need a model but not a framework."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyserve_worker import errors
from polyserve_worker.backends import base
from polyserve_worker.tensors import Array


class EchoInstance:
    """Returns every input as the output of the same position: honest and instant."""

    def __init__(self, config: Any) -> None:
        self.pairs = list(zip(config.input, config.output, strict=True))

    async def execute(
        self, requests: Sequence[Mapping[str, Array]], outputs: Sequence[str]
    ) -> base.ExecuteResult:
        results: list[base.Outputs | errors.PolyserveError] = [
            {o.name: r[i.name] for i, o in self.pairs if i.name in r} for r in requests
        ]
        return base.ExecuteResult(results, base.Timings())

    async def close(self) -> None:
        pass


class EchoBackend:
    name = "echo"
    default_filename = "model.txt"

    def complete_config(self, config: Any, model_path: Path) -> None:
        pass

    async def load(self, config: Any, model_path: Path, instance: base.InstanceSpec) -> Any:
        return EchoInstance(config)
