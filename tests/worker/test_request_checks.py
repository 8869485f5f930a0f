"""The dataplane remembers request signatures it has found valid, per model config: a
repeat must be exactly as strict as the first request, and a reload must check requests
against the new config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyserve_worker import config as model_config
from polyserve_worker import dataplane, errors, repository, tensors
from tests.worker.fakes import EchoBackend

ECHO_CONFIG = """
backend: "echo"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { }
"""

RESHAPED_CONFIG = """
backend: "echo"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]
"""

VARIABLE_CONFIG = """
backend: "echo"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


async def serving(root: Path, config: str) -> dataplane.DataPlane:
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "1" / "model.txt").write_text("")
    (root / "echo" / "config.pbtxt").write_text(config)
    repo = repository.Repository(root, extra_backends={"echo": EchoBackend()})
    await repo.load("echo")
    core = dataplane.DataPlane(repo)
    core.started = True
    return core


async def refusal(core: dataplane.DataPlane, **inputs: tensors.Array) -> str:
    with pytest.raises(errors.InvalidArgument) as raised:
        await core.infer("echo", "", inputs)
    return str(raised.value)


def floats(*shape: int) -> tensors.Array:
    return np.ones(shape, dtype=np.float32)


async def test_a_request_like_one_seen_before_is_still_refused_in_every_other_way(
    tmp_path: Path,
) -> None:
    core = await serving(tmp_path, ECHO_CONFIG)
    for _ in range(2):
        result = await core.infer("echo", "", {"INPUT0": floats(2, 4)})
        assert result.outputs["OUTPUT0"].shape == (2, 4)
    for _ in range(2):  # refusals are never remembered: the same answer each time
        assert await refusal(core, INPUT0=np.ones((2, 4), dtype=np.float64)) == (
            "input 'INPUT0' of model 'echo' has datatype FP64, expected FP32"
        )
        assert await refusal(core, INPUT0=floats(9, 4)) == (
            "input 'INPUT0' of model 'echo': batch size 9 is outside 1..8 (max_batch_size); "
            "split the request"
        )
        assert await refusal(core, INPUT0=floats(2, 4), EXTRA=floats(2, 4)) == (
            "model 'echo' has no input named 'EXTRA'; its inputs are 'INPUT0'"
        )
        assert await refusal(core) == (
            "model 'echo' expects input(s) 'INPUT0', which the request does not have"
        )
    with pytest.raises(errors.InvalidArgument, match="no output named 'NOPE'"):
        await core.infer("echo", "", {"INPUT0": floats(2, 4)}, ["NOPE"])
    await core.repository.close()


async def test_an_input_admitted_before_is_still_checked_while_decoding(tmp_path: Path) -> None:
    core = await serving(tmp_path, ECHO_CONFIG)
    served = core.require("echo")

    for _ in range(2):
        dims = await core.decode(served, 0, lambda budget: budget.admit("INPUT0", "FP32", [3, 4]))
        assert dims == (3, 4)
    for _ in range(2):
        with pytest.raises(errors.InvalidArgument, match=r"expects shape \[-1, 4\], got \[3, 5\]"):
            await core.decode(served, 0, lambda budget: budget.admit("INPUT0", "FP32", [3, 5]))
        with pytest.raises(errors.InvalidArgument, match="has datatype INT32, expected FP32"):
            await core.decode(served, 0, lambda budget: budget.admit("INPUT0", "INT32", [3, 4]))
        with pytest.raises(errors.InvalidArgument, match="has no input named 'OTHER'"):
            await core.decode(served, 0, lambda budget: budget.admit("OTHER", "FP32", [3, 4]))
    assert served.stats.fail.count == 6
    await core.repository.close()


async def test_a_reshaped_input_is_reshaped_on_every_request(tmp_path: Path) -> None:
    core = await serving(tmp_path, RESHAPED_CONFIG)
    for _ in range(3):
        result = await core.infer("echo", "", {"INPUT0": floats(3, 4)})
        assert result.outputs["OUTPUT0"].shape == (3, 2, 2)
    await core.repository.close()


async def test_a_reload_checks_requests_against_the_new_config(tmp_path: Path) -> None:
    core = await serving(tmp_path, ECHO_CONFIG)
    await core.infer("echo", "", {"INPUT0": floats(6, 4)})
    smaller = model_config.parse_json(
        '{"backend": "echo", "max_batch_size": 4,'
        ' "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],'
        ' "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}'
    )
    await core.repository.load("echo", smaller)
    assert "batch size 6 is outside 1..4" in await refusal(core, INPUT0=floats(6, 4))
    await core.repository.close()


async def test_more_shapes_than_are_remembered_are_all_still_checked(tmp_path: Path) -> None:
    core = await serving(tmp_path, VARIABLE_CONFIG)
    for size in range(1, dataplane.MEMO_SIZE + 20):
        result = await core.infer("echo", "", {"INPUT0": floats(size)})
        assert result.outputs["OUTPUT0"].shape == (size,)
    assert "expects shape [-1], got [2, 2]" in await refusal(core, INPUT0=floats(2, 2))
    result = await core.infer("echo", "", {"INPUT0": floats(1)})
    assert result.outputs["OUTPUT0"].shape == (1,)
    await core.repository.close()
