"""Tiny models and repositories built in the test process (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def identity(path: Path, datatype: str, batch_dim: bool = True) -> None:
    """OUTPUT0 = INPUT0 for one datatype; shape [batch, -1] or [-1]."""
    shape = ["batch", "n"] if batch_dim else ["n"]
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT0", elem, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem, shape)],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def add_sub(path: Path, datatype: str = "FP32", width: int = 16) -> None:
    """Triton's 'simple' model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [
            helper.make_tensor_value_info("INPUT0", elem, ["batch", width]),
            helper.make_tensor_value_info("INPUT1", elem, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", elem, ["batch", width]),
            helper.make_tensor_value_info("OUTPUT1", elem, ["batch", width]),
        ],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def scale(path: Path, factor: float) -> None:
    """OUTPUT0 = INPUT0 * factor (FP32 [batch, 4]): versions differ by their factor."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "k"], ["OUTPUT0"])],
        "scale",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([factor], dtype=np.float32), "k")],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


SIMPLE_PBTXT = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { kind: KIND_CPU count: 2 } ]
"""


def triton_repository(root: Path) -> Path:
    """A repository in Triton's exact layout and config syntax."""
    add_sub(root / "simple" / "1" / "model.onnx", "INT32")
    (root / "simple" / "config.pbtxt").write_text(SIMPLE_PBTXT)
    return root


def scale_versions(root: Path, versions: dict[int, float], policy: str = "") -> Path:
    for version, factor in versions.items():
        scale(root / "scale" / str(version) / "model.onnx", factor)
    config = "max_batch_size: 4\n" + (f"version_policy: {policy}\n" if policy else "")
    (root / "scale" / "config.yaml").write_text(config)
    return root


def mlp_like(path: Path, width: int = 1024, seed: int = 0) -> None:
    """A 4 MB fully connected layer: enough weight to make a leaked session visible."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((width, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "w"], ["OUTPUT0"])],
        "mlp_like",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weights, "w")],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)
