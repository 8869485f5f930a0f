"""Every Open Inference Protocol datatype round-trips over JSON, binary HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from polyserve_worker import errors, tensors
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "BF16": np.array([[-1.5, 0.0, 3.0e38]], dtype=ml_dtypes.bfloat16),
    "FP32": np.array([[-1.5, 0.0, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.0, 1.7e308]], dtype=np.float64),
    "BYTES": np.array([[b"hello", b"", "ünïcode".encode()]], dtype=object),
}

# tritonclient's JSON path cannot carry BF16 (it has no JSON form in the protocol).
JSON_UNSUPPORTED = {"BF16"}


@pytest.fixture(scope="module")
def typed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("typed")
    for datatype in SAMPLES:
        models.identity(root / f"id_{datatype.lower()}" / "1" / "model.onnx", datatype)
    return root


@pytest.fixture
def typed(typed_repo: Path, start_worker: StartWorker) -> RunningWorker:
    return start_worker(typed_repo)


def check(out: np.ndarray, sample: np.ndarray, datatype: str) -> None:
    assert out.shape == sample.shape
    if datatype == "BYTES":
        # tritonclient hands JSON BYTES back as str, binary BYTES as bytes.
        got = [x.encode() if isinstance(x, str) else bytes(x) for x in out.reshape(-1)]
        assert got == list(sample.reshape(-1))
    else:
        np.testing.assert_array_equal(out.astype(sample.dtype), sample)


def test_every_datatype_round_trips_over_every_transport(typed: RunningWorker) -> None:
    http = httpclient.InferenceServerClient(typed.http)
    grpc = grpcclient.InferenceServerClient(typed.grpc)
    for datatype, sample in SAMPLES.items():
        model = f"id_{datatype.lower()}"
        for binary in (False, True):
            if not binary and datatype in JSON_UNSUPPORTED:
                continue
            inp = httpclient.InferInput("INPUT0", list(sample.shape), datatype)
            inp.set_data_from_numpy(sample, binary_data=binary)
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
            result = http.infer(model, [inp], outputs=[out])
            check(result.as_numpy("OUTPUT0"), sample, datatype)
        ginp = grpcclient.InferInput("INPUT0", list(sample.shape), datatype)
        ginp.set_data_from_numpy(sample)
        check(grpc.infer(model, [ginp]).as_numpy("OUTPUT0"), sample, datatype)


def test_autocompleted_config_reports_every_type(typed: RunningWorker) -> None:
    http = httpclient.InferenceServerClient(typed.http)
    for datatype in SAMPLES:
        meta = http.get_model_metadata(f"id_{datatype.lower()}")
        assert meta["inputs"][0]["datatype"] == datatype
        assert meta["inputs"][0]["shape"] == [-1, -1]


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        *((sample.dtype, datatype) for datatype, sample in SAMPLES.items()),
        (np.dtype("=f4"), "FP32"),
        (np.dtype("S3"), "BYTES"),
        (np.dtype("U2"), "BYTES"),
        (np.dtype(np.intc), "INT32"),
    ],
)
def test_an_array_is_named_by_its_datatype(dtype: np.dtype, datatype: str) -> None:
    assert tensors.datatype_of(np.zeros(2, dtype=dtype)) == datatype


@pytest.mark.parametrize("dtype", [np.dtype(">f4"), np.dtype(np.complex64), np.dtype("M8[s]")])
def test_an_array_with_no_protocol_datatype_is_a_server_error(dtype: np.dtype) -> None:
    with pytest.raises(errors.ServerError, match="has no Open Inference Protocol datatype"):
        tensors.datatype_of(np.zeros(2, dtype=dtype))
