"""Build the example ``mlp`` again in every framework installed here (no downloads).

    python examples/build_framework_models.py examples/models

The ONNX ``mlp`` (``build_models.py``) is the source: its weights become a TorchScript
module (``mlp_torch``, Triton's ``INPUT__0``/``OUTPUT__0`` names), a TensorFlow SavedModel
(``mlp_tf``) and OpenVINO IR in FP32 and BF16 (``mlp_openvino``, ``mlp_openvino_bf16``), so
the demo can show every backend giving the same answer. A framework that is not installed
is skipped with a note; its extra says how to get it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_models  # noqa: E402

#: model -> (framework module, pip extra)
FRAMEWORKS = {
    "mlp_torch": ("torch", "torch"),
    "mlp_tf": ("tensorflow", "tensorflow"),
    "mlp_openvino": ("openvino", "openvino"),
    "mlp_openvino_bf16": ("openvino", "openvino"),
}

#: model -> (input name, output name)
NAMES = {
    "mlp_torch": ("INPUT__0", "OUTPUT__0"),
    "mlp_tf": ("INPUT0", "OUTPUT0"),
    "mlp_openvino": ("INPUT0", "OUTPUT0"),
    "mlp_openvino_bf16": ("INPUT0", "OUTPUT0"),
}

TORCH_CONFIG = """\
# Triton's PyTorch conventions: a TorchScript file records no tensor types, so the config
# lists them, and the __0 suffix gives each tensor's position.
name: "mlp_torch"
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { }
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
"""

TF_CONFIG = """\
# Everything else is read from the serving_default signature.
backend: tensorflow
max_batch_size: 64
dynamic_batching: {}
"""

OPENVINO_CONFIG = """\
# Tensors from the IR; the precision hint and performance hint from parameters.
backend: openvino
max_batch_size: 64
dynamic_batching: {{}}
parameters:
  precision: {precision}
  PERFORMANCE_HINT: LATENCY
"""


def layers() -> list[tuple[np.ndarray, np.ndarray]]:
    """The ONNX mlp's (weight [in, out], bias) pairs, in order."""
    initializers = {
        t.name: numpy_helper.to_array(t) for t in build_models.mlp_model().graph.initializer
    }
    return [(initializers[f"w{i}"], initializers[f"b{i}"]) for i in range(3)]


def torchscript(path: Path) -> None:
    import torch

    # Tracing is deprecated upstream, yet TorchScript is what Triton repositories hold.
    warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)

    modules: list[Any] = []
    for i, (weight, bias) in enumerate(layers()):
        linear = torch.nn.Linear(*weight.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias))
        modules.append(linear)
        if i < 2:
            modules.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*modules).eval()
    torch.jit.trace(model, torch.zeros(1, 256)).save(str(path))


def savedmodel(path: Path) -> None:
    import tensorflow as tf

    weights = [(tf.constant(w), tf.constant(b)) for w, b in layers()]

    class Mlp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32, name="INPUT0")])
        def serve(self, x: Any) -> dict[str, Any]:
            for i, (w, b) in enumerate(weights):
                x = tf.matmul(x, w) + b
                if i < 2:
                    x = tf.nn.relu(x)
            return {"OUTPUT0": x}

    module = Mlp()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def openvino_ir(path: Path, onnx_path: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)


def build(root: Path) -> list[str]:
    """Build what the installed frameworks allow; returns the models built."""
    onnx_path = root / "mlp" / "1" / "model.onnx"
    if not onnx_path.exists():
        build_models.build(root)
    built = []
    for model, (module, extra) in FRAMEWORKS.items():
        if importlib.util.find_spec(module) is None:
            print(f"skipped {model}: {module} is not installed (pip install 'polyserve[{extra}]')")
            continue
        version_dir = root / model / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        if model == "mlp_torch":
            torchscript(version_dir / "model.pt")
            (root / model / "config.pbtxt").write_text(TORCH_CONFIG)
        elif model == "mlp_tf":
            savedmodel(version_dir / "model.savedmodel")
            (root / model / "config.yaml").write_text(TF_CONFIG)
        else:
            openvino_ir(version_dir / "model.xml", onnx_path)
            precision = "bf16" if model.endswith("bf16") else "fp32"
            (root / model / "config.yaml").write_text(OPENVINO_CONFIG.format(precision=precision))
        print(f"built {version_dir}")
        built.append(model)
    return built


PREPROCESS_CONFIG = """\
# Scales raw features to the range the mlp was trained on: (x - 0.5) * 2.
name: "preprocess_torch"
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 256 ] } ]
dynamic_batching { }
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
"""

PIPELINE_CONFIG = """\
# An ensemble across frameworks: TorchScript preprocessing feeds the ONNX Runtime mlp in one
# request; the 256-float intermediate tensor never leaves the worker.
platform: ensemble
max_batch_size: 64
input: [{name: FEATURES, data_type: FP32, dims: [256]}]
output: [{name: SCORES, data_type: FP32, dims: [10]}]
ensemble_scheduling:
  step:
    - {model_name: preprocess_torch, input_map: {INPUT__0: FEATURES},
       output_map: {OUTPUT__0: scaled}}
    - {model_name: mlp, input_map: {INPUT0: scaled}, output_map: {OUTPUT0: SCORES}}
"""


def build_pipeline(root: Path) -> bool:
    """``preprocess_torch`` (TorchScript) and ``pipeline`` (it, then the ONNX ``mlp``)."""
    if importlib.util.find_spec("torch") is None:
        print("skipped pipeline: torch is not installed (pip install 'polyserve[torch]')")
        return False
    import torch

    warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)

    class Preprocess(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - 0.5) * 2.0

    version_dir = root / "preprocess_torch" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Preprocess()).save(str(version_dir / "model.pt"))
    (root / "preprocess_torch" / "config.pbtxt").write_text(PREPROCESS_CONFIG)
    (root / "pipeline").mkdir(exist_ok=True)
    (root / "pipeline" / "config.yaml").write_text(PIPELINE_CONFIG)
    print(f"built {root / 'pipeline'} (TorchScript -> ONNX Runtime)")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, nargs="?", default=Path("examples/models"))
    args = parser.parse_args(argv)
    build(args.root)
    build_pipeline(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
