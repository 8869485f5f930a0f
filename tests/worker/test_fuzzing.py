"""Property-based fuzzing of the request decoders and of config parsing (Hypothesis).

The properties: whatever bytes arrive, a decoder either yields tensors the model accepts or
raises one of the protocol's errors (``errors.PolyserveError``: a 4xx), never anything else
(a 500); and decoding never allocates more than a bound proportional to the bytes received.
Runs are derandomized with a fixed budget, so CI sees the same examples every time and the
default run stays at a few seconds; raise ``FUZZ_EXAMPLES`` locally to search longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from polyserve_worker import batching, errors, tensors
from polyserve_worker import config as model_config
from polyserve_worker import ensemble as ensembles
from polyserve_worker.transport import grpc as grpc_transport
from polyserve_worker.transport import rest
from tests.worker.conftest import RunningWorker, StartWorker
from tests.worker.fakes import EchoBackend

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Decoding may hold at most this many bytes per byte received, plus a constant: JSON turns
#: a 2-byte "[]" into a 56-byte list object, so the factor is generous; what it rules out is
#: an allocation that follows a claimed shape instead of the payload.
BYTES_PER_BYTE = 64
SLACK = 1 << 20


ECHO_CONFIG = """
backend: echo
max_batch_size: 8
input:
  - {name: F, data_type: FP32, dims: [-1]}
  - {name: S, data_type: BYTES, dims: [-1], optional: true}
  - {name: U, data_type: UINT8, dims: [2, 3], optional: true}
  - {name: B, data_type: BOOL, dims: [-1], optional: true}
  - {name: I, data_type: INT16, dims: [-1], optional: true}
output:
  - {name: F_OUT, data_type: FP32, dims: [-1]}
  - {name: S_OUT, data_type: BYTES, dims: [-1]}
  - {name: U_OUT, data_type: UINT8, dims: [2, 3]}
  - {name: B_OUT, data_type: BOOL, dims: [-1]}
  - {name: I_OUT, data_type: INT16, dims: [-1]}
"""


@pytest.fixture
def echo(tmp_path: Path, start_worker: StartWorker) -> RunningWorker:
    (tmp_path / "echo" / "1").mkdir(parents=True)
    (tmp_path / "echo" / "1" / "model.txt").write_text("echo")
    (tmp_path / "echo" / "config.yaml").write_text(ECHO_CONFIG)
    return start_worker(
        tmp_path,
        extra_backends={"echo": EchoBackend()},
        max_request_elements=1 << 16,
        max_request_bytes=1 << 20,
    )


def bounded(received: int, call: Callable[[], Any]) -> Any:
    """Run ``call`` and check its peak allocation against the bytes received."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before <= BYTES_PER_BYTE * received + SLACK, (
        f"{received} bytes received, {peak - before} bytes allocated"
    )
    return result


def serve_http(worker: RunningWorker, body: bytes, header_length: str | None) -> None:
    """Decode, infer and encode one HTTP body the way the REST transport does."""
    core = worker.worker.core

    async def run() -> None:
        served = core.require("echo")
        lease = core.shm.lease()
        try:
            decoded = await core.decode(
                served, len(body), lambda b: rest.decode_request(body, header_length, lease, b)
            )
            inputs, outputs, binary, params, request_id, placements = decoded
            result = await core.infer("echo", "", inputs, outputs, params, request_id)
            rest.encode_response(result, binary, placements)
        finally:
            lease.release()

    with contextlib.suppress(errors.PolyserveError):
        bounded(len(body), lambda: worker.call(run()))


# -- strategies ----------------------------------------------------------------------------

NAMES = st.sampled_from(["F", "S", "U", "B", "I", "X", ""])
DATATYPES = st.sampled_from([*tensors.DTYPES, "fp32", "WAT"])
DIMS = st.one_of(st.integers(-2, 6), st.sampled_from([0, 1 << 20, 1 << 31, 1 << 62, -(1 << 40)]))
SHAPES = st.lists(DIMS, max_size=4)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
DATA = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6), max_leaves=40)
PARAMS = st.dictionaries(
    st.sampled_from(["priority", "timeout", "binary_data_output", "x"]), SCALARS, max_size=3
)


@st.composite
def json_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """One JSON input; half the time its shape fits its data, so decoding goes deep."""
    data = draw(DATA)
    shape = draw(SHAPES)
    if draw(st.booleans()):
        shape = [1, len(data)] if isinstance(data, list) else [1]
    item: dict[str, Any] = {
        "name": draw(NAMES),
        "shape": shape,
        "datatype": draw(DATATYPES),
        "data": data,
    }
    if draw(st.booleans()):
        item["parameters"] = draw(st.dictionaries(st.text(max_size=6), SCALARS, max_size=2))
    return item


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    inputs = draw(st.lists(json_inputs(), max_size=4))
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["parameters"] = draw(PARAMS)
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries({"name": NAMES}), max_size=3))
    return json.dumps(doc).encode()


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    inputs = []
    payloads = []
    for _ in range(draw(st.integers(1, 3))):
        payload = draw(
            st.one_of(
                st.binary(max_size=64),
                st.lists(st.binary(max_size=6), max_size=8).map(
                    lambda items: b"".join(struct.pack("<I", len(i)) + i for i in items)
                ),
                st.integers(0, (1 << 32) - 1).map(lambda n: struct.pack("<I", n) + b"ab"),
            )
        )
        size = draw(st.one_of(st.just(len(payload)), st.integers(-1, 80)))
        payloads.append(payload)
        inputs.append(
            {
                "name": draw(NAMES),
                "shape": draw(SHAPES),
                "datatype": draw(DATATYPES),
                "parameters": {"binary_data_size": size},
            }
        )
    header = json.dumps({"inputs": inputs}).encode()
    length = draw(st.one_of(st.just(str(len(header))), st.text(max_size=4)))
    return header + b"".join(payloads), length


# -- the properties ------------------------------------------------------------------------


@FUZZ
@given(body=st.one_of(json_bodies(), st.binary(max_size=200)))
def test_http_json_requests_decode_or_fail_with_a_protocol_error(
    echo: RunningWorker, body: bytes
) -> None:
    serve_http(echo, body, None)


@FUZZ
@given(request=binary_bodies())
def test_http_binary_requests_decode_or_fail_with_a_protocol_error(
    echo: RunningWorker, request: tuple[bytes, str]
) -> None:
    body, header_length = request
    serve_http(echo, body, header_length)


_CONTENT_FIELDS = [
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
]
_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(1 << 31), (1 << 31) - 1),
    "int64_contents": st.integers(-(1 << 63), (1 << 63) - 1),
    "uint_contents": st.integers(0, (1 << 32) - 1),
    "uint64_contents": st.integers(0, (1 << 64) - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}


@st.composite
def grpc_requests(draw: st.DrawFn) -> Any:
    request = pb.ModelInferRequest(model_name="echo")
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(DATATYPES)
        tensor = request.inputs.add(
            name=draw(NAMES),
            datatype=datatype,
            shape=[d for d in draw(SHAPES) if -(1 << 63) <= d < 1 << 63],
        )
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=48)))
            continue
        # Mostly the field the datatype travels in, with a shape that fits the values.
        fitting = grpc_transport._CONTENTS.get(datatype, "fp32_contents")
        field = draw(st.one_of(st.just(fitting), st.sampled_from(_CONTENT_FIELDS)))
        values = draw(st.lists(_FIELD_VALUES[field], max_size=12))
        getattr(tensor.contents, field).extend(values)
        if draw(st.booleans()):
            tensor.ClearField("shape")
            tensor.shape.extend([1, len(values)])
    if draw(st.booleans()) and request.raw_input_contents:
        request.raw_input_contents.append(b"extra")
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "x"]), max_size=2)):
        param = request.parameters[key]
        kind = draw(st.sampled_from(["int64", "uint64", "double", "bool", "string"]))
        if kind == "int64":
            param.int64_param = draw(st.integers(-(1 << 63), (1 << 63) - 1))
        elif kind == "uint64":
            param.uint64_param = draw(st.integers(0, (1 << 64) - 1))
        elif kind == "double":
            param.double_param = draw(st.floats())
        elif kind == "bool":
            param.bool_param = draw(st.booleans())
        else:
            param.string_param = draw(st.text(max_size=8))
    return request


@FUZZ
@given(request=grpc_requests())
def test_grpc_requests_decode_or_fail_with_a_protocol_error(
    echo: RunningWorker, request: Any
) -> None:
    core = echo.worker.core
    received = request.ByteSize()

    async def run() -> None:
        served = core.require("echo")
        lease = core.shm.lease()
        try:
            inputs, outputs, params, placements = await core.decode(
                served, received, lambda b: grpc_transport.decode_request(request, lease, b)
            )
            result = await core.infer("echo", "", inputs, outputs, params, request.id)
            grpc_transport.encode_response(result, placements)
        finally:
            lease.release()

    with contextlib.suppress(errors.PolyserveError):
        bounded(received, lambda: echo.call(run()))


# -- config parsing ------------------------------------------------------------------------

CONFIG_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 40), 1 << 40),
        st.floats(allow_nan=False),
        st.sampled_from(["TYPE_FP32", "FP32", "KIND_CPU", "DELAY", "ensemble", "x", "-1"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "data_type",
                    "dims",
                    "count",
                    "kind",
                    "max_queue_size",
                    "timeout_action",
                    "model_name",
                    "input_map",
                    "output_map",
                    "step",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
CONFIG_KEYS = st.sampled_from(
    [
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "input",
        "output",
        "version_policy",
        "instance_group",
        "dynamic_batching",
        "parameters",
        "default_model_filename",
        "ensemble_scheduling",
        "unknown",
    ]
)
CONFIG_DICTS = st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=6)


def parse_and_use(parse: Callable[[], Any]) -> None:
    """Parse a config and do what a load does with it before touching a model file."""
    try:
        config = parse()
        model_config.validate(config)
        batching.Policy.from_config(config)
        model_config.to_dict(config)
        if ensembles.is_ensemble(config):
            ensembles.Ensemble(config)
    except errors.PolyserveError:
        pass


@FUZZ
@given(doc=CONFIG_DICTS)
def test_yaml_and_json_configs_parse_or_fail_with_a_load_error(doc: dict[str, Any]) -> None:
    import yaml

    parse_and_use(lambda: model_config.parse_yaml(yaml.safe_dump(doc)))
    parse_and_use(lambda: model_config.parse_json(json.dumps(doc)))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "name: ",
                    '"m" ',
                    "max_batch_size: ",
                    "-1 ",
                    "9999999999999999999999 ",
                    "input [ { ",
                    "} ] ",
                    "dims: [ ",
                    "] ",
                    "data_type: TYPE_FP32 ",
                    "instance_group [ { count: ",
                    "dynamic_batching { ",
                    "} ",
                    "[[[[",
                    "{{{{",
                    "priority_levels: 3 ",
                ]
            ),
            max_size=30,
        ).map("".join),
    )
)
def test_pbtxt_and_yaml_texts_parse_or_fail_with_a_load_error(text: str) -> None:
    parse_and_use(lambda: model_config.parse_pbtxt(text))
    parse_and_use(lambda: model_config.parse_yaml(text))
    parse_and_use(lambda: model_config.parse_json(text))


def test_a_deeply_nested_yaml_config_is_a_load_error_not_a_crash() -> None:
    with pytest.raises(errors.ModelLoadError):
        model_config.parse_yaml("[" * 5000 + "]" * 5000)
