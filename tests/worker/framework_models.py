"""One small network in every framework's format, built in the test process (no downloads).

``WEIGHTS`` fixes a two-layer perceptron (FP32 [batch, 8] -> 16 -> ReLU -> [batch, 4]); each
builder writes it in one format, so the parity test can serve all of them side by side and
expect the same answers. Each framework is imported inside its builder, so a test module
that needs only one framework imports only that one.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

IN, HIDDEN, OUT = 8, 16, 4


def require(module: str, extra: str) -> Any:
    """Import a framework for a test module, or skip it saying which extra to install.

    A framework's import leaves hundreds of thousands of long-lived objects that every full
    collection scans again, and the repository collects on each unload: freezing them keeps
    the rest of the suite as fast as it is without frameworks (~0.45 s per unload otherwise).
    """
    imported = pytest.importorskip(module, reason=f"needs {module}: pip install polyserve[{extra}]")
    gc.collect()
    gc.freeze()
    return imported


def weights(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w0": (rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN)).astype(np.float32),
        "b0": (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32),
        "w1": (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b1": (rng.standard_normal(OUT) * 0.1).astype(np.float32),
    }


def reference(x: np.ndarray) -> np.ndarray:
    """The network in numpy: what every format must return."""
    w = weights()
    hidden = np.maximum(x @ w["w0"] + w["b0"], 0)
    result: np.ndarray = hidden @ w["w1"] + w["b1"]
    return result


def onnx_mlp(path: Path, input_name: str = "INPUT0", output_name: str = "OUTPUT0") -> None:
    w = weights()
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", [input_name, "w0", "b0"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w1", "b1"], [output_name]),
        ],
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", IN])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _torch_mlp() -> Any:
    import torch

    w = weights()

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Linear(IN, HIDDEN)
            self.second = torch.nn.Linear(HIDDEN, OUT)
            with torch.no_grad():
                self.first.weight.copy_(torch.from_numpy(w["w0"].T.copy()))
                self.first.bias.copy_(torch.from_numpy(w["b0"]))
                self.second.weight.copy_(torch.from_numpy(w["w1"].T.copy()))
                self.second.bias.copy_(torch.from_numpy(w["b1"]))

        def forward(self, x: Any) -> Any:
            return self.second(torch.relu(self.first(x)))

    return Mlp().eval()


def torchscript_mlp(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(_torch_mlp(), torch.zeros(2, IN)).save(str(path))


def torch_export_mlp(path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        _torch_mlp(), (torch.zeros(2, IN),), dynamic_shapes={"x": {0: batch}}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))


def savedmodel_mlp(path: Path) -> None:
    import tensorflow as tf

    w = {k: tf.constant(v) for k, v in weights().items()}

    class Mlp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, IN], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            hidden = tf.nn.relu(tf.matmul(x, w["w0"]) + w["b0"])
            return {"y": tf.matmul(hidden, w["w1"]) + w["b1"]}

    module = Mlp()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def openvino_mlp(path: Path, onnx_source: Path) -> None:
    """OpenVINO IR (``model.xml`` + ``model.bin``) converted from the ONNX file."""
    import openvino as ov

    model = ov.convert_model(str(onnx_source))
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
