"""Codecs, config parsing and settings: the pieces under the transports."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from polyserve_worker import config, errors, main, tensors
from polyserve_worker import settings as worker_settings


def test_bytes_tensors_round_trip_through_the_length_prefixed_form() -> None:
    array = np.array([b"a", b"", b"\xff\x00"], dtype=object)
    raw = tensors.to_raw(array)
    assert (
        raw
        == struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + struct.pack("<I", 2) + b"\xff\x00"
    )
    back = tensors.from_raw("x", raw, "BYTES", [3])
    assert list(back) == list(array)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (struct.pack("<I", 10) + b"abc", "claims 10 bytes"),
        (b"\x01\x00", "ends after 0"),
        (struct.pack("<I", 1) + b"a" + b"extra", "left over"),
    ],
)
def test_broken_bytes_payloads_are_invalid(payload: bytes, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=fragment):
        tensors.from_raw("x", payload, "BYTES", [1])


def test_raw_tensors_are_little_endian_views() -> None:
    array = tensors.from_raw("x", struct.pack("<2i", 1, -2), "INT32", [2])
    assert array.tolist() == [1, -2]


def test_json_data_may_be_nested_or_flat() -> None:
    nested = tensors.from_json("x", [[1, 2], [3, 4]], "INT64", [2, 2])
    flat = tensors.from_json("x", [1, 2, 3, 4], "INT64", [2, 2])
    np.testing.assert_array_equal(nested, flat)
    with pytest.raises(errors.InvalidArgument, match="BOOL"):
        tensors.from_json("x", [2], "BOOL", [1])


def test_yaml_and_pbtxt_configs_parse_to_the_same_message() -> None:
    yaml_text = """
name: m
max_batch_size: 8
input: [{name: x, data_type: FP32, dims: [4]}]
output: [{name: y, data_type: TYPE_FP32, dims: [4]}]
dynamic_batching:
  preferred_batch_size: [4]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy: {1: {max_queue_size: 5, timeout_action: DELAY}}
instance_group: [{kind: KIND_CPU, count: 2}]
parameters: {intra_op_thread_count: 1}
"""
    pbtxt = """
name: "m"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching {
  preferred_batch_size: [4]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy { key: 1 value { max_queue_size: 5 timeout_action: DELAY } }
}
instance_group [{ kind: KIND_CPU count: 2 }]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
"""
    assert config.parse_yaml(yaml_text) == config.parse_pbtxt(pbtxt)


def test_config_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelLoadError, match="max_batch_sise"):
        config.parse_yaml("max_batch_sise: 4")
    bad = config.parse_yaml("max_batch_size: 4\ndynamic_batching: {preferred_batch_size: [8]}")
    bad.name = "m"
    with pytest.raises(errors.ModelLoadError, match="preferred_batch_size 8"):
        config.validate(bad)
    unbatched = config.parse_yaml("dynamic_batching: {}")
    with pytest.raises(errors.ModelLoadError, match="needs max_batch_size > 0"):
        config.validate(unbatched)


def test_spec_renders_pbtxt_that_parses_back() -> None:
    spec = config.ModelConfigSpec(
        name="m", max_batch_size=4, input=[config.TensorSpec(name="x", data_type="FP16", dims=[-1])]
    )
    message = config.parse_pbtxt(spec.to_pbtxt())
    assert message.input[0].data_type == config.model_config_pb2.TYPE_FP16


def test_flags_override_environment_which_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POLYSERVE_HTTP_PORT", "9000")
    monkeypatch.setenv("POLYSERVE_GRPC_PORT", "9001")
    settings = main.settings_from(
        [
            "--model-repository",
            str(tmp_path),
            "--grpc-port",
            "7001",
            "--load-model",
            "a",
            "--load-model",
            "b",
        ]
    )
    assert settings.http_port == 9000
    assert settings.grpc_port == 7001
    assert settings.metrics_port == 8002
    assert settings.load_model == ("a", "b")


def test_rendered_flags_parse_back_to_the_same_settings(tmp_path: Path) -> None:
    values = {
        "model_repository": tmp_path,
        "http_port": 8000,
        "strict_readiness": True,
        "exit_on_error": False,
        "load_model": ("a", "b"),
        "model_control_mode": "explicit",
        "exit_timeout_secs": 12.5,
    }
    args = worker_settings.to_args(values)
    assert "--strict-readiness=true" in args
    parsed = worker_settings.parse(args)
    assert {k: getattr(parsed, k) for k in values} == values


def test_a_bare_boolean_flag_means_true_and_a_value_is_parsed(tmp_path: Path) -> None:
    bare = worker_settings.parse(["--model-repository", str(tmp_path), "--strict-readiness"])
    assert bare.strict_readiness is True
    off = worker_settings.parse([f"--model-repository={tmp_path}", "--strict-readiness", "false"])
    assert off.strict_readiness is False


def test_rendering_a_value_the_worker_would_refuse_fails_where_it_is_rendered() -> None:
    with pytest.raises(ValidationError):
        worker_settings.to_args({"http_port": 70000})
    with pytest.raises(ValueError, match="no setting 'http_prot'"):
        worker_settings.to_args({"http_prot": 8000})


def test_missing_repository_flag_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main([]) == 2
    assert "--model-repository" in capsys.readouterr().err
