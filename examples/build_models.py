"""Build the bundled example model repository (no downloads): ``mlp`` and ``cnn`` as ONNX.

    python examples/build_models.py examples/models

``mlp`` (FP32 [-1,256] -> 1024 -> 1024 -> [-1,10]) is configured with Triton's
``config.pbtxt``; ``cnn`` (FP32 [-1,3,224,224] -> [-1,1000]) with the friendlier
``config.yaml``. Weights are seeded, so outputs are reproducible.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    sizes = [256, 1024, 1024, 10]
    nodes, inits = [], []
    current = "INPUT0"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        inits.append(_init(f"w{i}", rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)))
        inits.append(_init(f"b{i}", rng.standard_normal(fan_out) * 0.01))
        out = "OUTPUT0" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if out == "OUTPUT0" else f"g{i}"
        nodes.append(helper.make_node("Gemm", ["" + current, f"w{i}", f"b{i}"], [gemm_out]))
        if out != "OUTPUT0":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _finish(graph)


def cnn_model(seed: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        _init("c1w", rng.standard_normal((16, 3, 3, 3)) * 0.2),
        _init("c1b", np.zeros(16)),
        _init("c2w", rng.standard_normal((32, 16, 3, 3)) * 0.1),
        _init("c2b", np.zeros(32)),
        _init("fcw", rng.standard_normal((32, 1000)) * 0.2),
        _init("fcb", np.zeros(1000)),
    ]
    conv = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["INPUT0", "c1w", "c1b"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1000])],
        inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


MLP_CONFIG = """\
# Triton's config.pbtxt, served unchanged.
name: "mlp"
backend: "onnxruntime"
max_batch_size: 64
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

CNN_CONFIG = """\
# The same fields as config.pbtxt, in YAML.
name: cnn
backend: onnxruntime
max_batch_size: 16
input:
  - {name: INPUT0, data_type: TYPE_FP32, dims: [3, 224, 224]}
output:
  - {name: OUTPUT0, data_type: TYPE_FP32, dims: [1000]}
dynamic_batching: {}
instance_group:
  - {kind: KIND_CPU, count: 1}
parameters:
  intra_op_thread_count: "2"
"""


def build(root: Path) -> None:
    for name, model, config_name, config in (
        ("mlp", mlp_model(), "config.pbtxt", MLP_CONFIG),
        ("cnn", cnn_model(), "config.yaml", CNN_CONFIG),
    ):
        version_dir = root / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(version_dir / "model.onnx"))
        (root / name / config_name).write_text(config)
        print(f"built {version_dir / 'model.onnx'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, nargs="?", default=Path("examples/models"))
    args = parser.parse_args(argv)
    build(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
