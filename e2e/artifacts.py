"""Model artifacts for the e2e suite: small ONNX models with the examples' exact signatures.

``manifests/examples/`` name models in object stores this machine cannot reach; these
stand-ins have the same tensor names, types and shapes, so each example's own config serves
them unchanged. The tests point the examples' ``artifact.uri`` at them (``file://``), or at
the sandbox's PersistentVolumeClaim folder for ``pvc://`` URIs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _save(graph: onnx.GraphProto, path: Path, *, ml: bool = False) -> Path:
    imports = [helper.make_opsetid("", OPSET)]
    if ml:
        imports.append(helper.make_opsetid("ai.onnx.ml", 2))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _weights(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def resnet(path: Path) -> Path:
    """``input`` FP32 [batch, 3, 224, 224] -> ``logits`` FP32 [batch, 1000]: mean of each
    channel, then a dense layer (the example's signature, a tiny model)."""
    rng = np.random.default_rng(7)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        "resnet-stand-in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        [_weights("w", rng.standard_normal((3, 1000))), _weights("b", np.zeros(1000))],
    )
    return _save(graph, path)


#: The words the tokenizer stand-in knows; anything else is id 0.
VOCABULARY = ("great", "terrible", "fine")


def tokenizer(path: Path) -> Path:
    """``text`` BYTES [batch, 1] -> ``ids`` INT64 [batch, 128]: a word's id, repeated."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["id"],
                domain="ai.onnx.ml",
                keys_strings=list(VOCABULARY),
                values_int64s=list(range(1, len(VOCABULARY) + 1)),
                default_int64=0,
            ),
            helper.make_node("Expand", ["id", "shape"], ["ids"]),
        ],
        "tokenizer-stand-in",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 128])],
        [numpy_helper.from_array(np.array([1, 128], dtype=np.int64), "shape")],
    )
    return _save(graph, path, ml=True)


def sentiment(path: Path) -> Path:
    """``input_ids`` INT64 [batch, 128] -> ``probabilities`` FP32 [batch, 2]."""
    weights = np.zeros((128, 2))
    weights[:, 0] = 0.01  # positive grows with the id, so ids 1 and 2 answer differently
    weights[:, 1] = -0.01
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("Gemm", ["x", "w", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        ],
        "sentiment-stand-in",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 128])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [_weights("w", weights), _weights("b", np.zeros(2))],
    )
    return _save(graph, path)


def scale(path: Path, factor: float) -> Path:
    """``INPUT0`` FP32 [batch, 4] -> ``OUTPUT0`` = ``factor`` x INPUT0 (to tell revisions
    apart by their answers)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "k"], ["OUTPUT0"])],
        "scale",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")],
    )
    return _save(graph, path)
