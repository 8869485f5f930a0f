"""Model configuration: Triton's ``config.pbtxt`` and a friendlier ``config.yaml``.

The runtime form is Triton's ``ModelConfig`` protobuf (from tritonclient's generated
``model_config_pb2``), so an existing Triton repository serves unchanged and the config
endpoints return exactly what Triton returns. ``ModelConfigSpec`` is the same schema as
pydantic models, with Triton's field names: it validates ``config.yaml`` and is the
contract the operator imports to embed in its CRDs and render ConfigMaps. This module
knows nothing about backends or transports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tritonclient.grpc import model_config_pb2 as model_config_pb2  # re-exported

from polyserve_worker import errors, tensors

ModelConfig = model_config_pb2.ModelConfig

PBTXT = "config.pbtxt"
YAML_NAMES = ("config.yaml", "config.yml")

DataType = Literal[
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reshape(_Spec):
    shape: list[int] = Field(description="Shape the model sees, without the batch dimension.")


class TensorSpec(_Spec):
    """One model input or output."""

    name: str = Field(description="Tensor name as the model file names it.")
    data_type: DataType = Field(
        description="Triton data type, e.g. TYPE_FP32. OIP names (FP32) are accepted too."
    )
    dims: list[int] = Field(
        description=(
            "Shape of one sample, without the batch dimension when max_batch_size > 0; "
            "-1 marks a variable dimension."
        )
    )
    reshape: Reshape | None = Field(default=None, description="Shape the model expects.")
    optional: bool | None = Field(default=None, description="Input may be omitted.")

    @field_validator("data_type", mode="before")
    @classmethod
    def _accept_wire_names(cls, value: Any) -> Any:
        if isinstance(value, str) and value in tensors.DTYPES:
            return tensors.WIRE_TO_CONFIG[value]
        return value


class QueuePolicy(_Spec):
    """Triton's per-priority queue policy."""

    timeout_action: Literal["REJECT", "DELAY"] | None = Field(
        default=None,
        description="What happens to a request whose timeout expires in the queue.",
    )
    default_timeout_microseconds: int | None = Field(
        default=None, ge=0, description="Queue timeout; 0 means none."
    )
    allow_timeout_override: bool | None = Field(
        default=None, description="Requests may set their own, shorter timeout."
    )
    max_queue_size: int | None = Field(
        default=None, ge=0, description="Queued requests above this are refused; 0: unbounded."
    )


class DynamicBatching(_Spec):
    """Triton's dynamic batcher settings."""

    preferred_batch_size: list[int] | None = Field(
        default=None, description="Batch sizes the batcher aims for."
    )
    max_queue_delay_microseconds: int | None = Field(
        default=None, ge=0, description="How long a request may wait for batch-mates."
    )
    preserve_ordering: bool | None = Field(
        default=None, description="Responses leave in the order requests arrived."
    )
    priority_levels: int | None = Field(
        default=None, ge=0, description="Number of priority levels; 1 is the highest."
    )
    default_priority_level: int | None = Field(
        default=None, ge=0, description="Level of requests that set no priority."
    )
    default_queue_policy: QueuePolicy | None = None
    priority_queue_policy: dict[int, QueuePolicy] | None = None


class InstanceGroup(_Spec):
    """A set of model instances on one kind of device."""

    name: str | None = None
    kind: Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL"] | None = Field(
        default=None, description="Device kind: KIND_CPU, KIND_GPU or KIND_AUTO."
    )
    count: int | None = Field(default=None, ge=1, description="Instances per device.")
    gpus: list[int] | None = Field(default=None, description="GPU ids for KIND_GPU.")


class Latest(_Spec):
    num_versions: int = Field(default=1, ge=1)


class Specific(_Spec):
    versions: list[int]


class VersionPolicy(_Spec):
    """Which versions of the model serve: exactly one of latest, all, specific."""

    latest: Latest | None = None
    all: dict[str, Any] | None = None
    specific: Specific | None = None


class EnsembleStep(_Spec):
    model_name: str
    model_version: int = -1
    input_map: dict[str, str] = Field(description="Step model input -> ensemble tensor.")
    output_map: dict[str, str] = Field(description="Step model output -> ensemble tensor.")


class EnsembleScheduling(_Spec):
    step: list[EnsembleStep]


class ModelConfigSpec(_Spec):
    """The worker's model configuration, in Triton's field names."""

    name: str | None = Field(default=None, description="Defaults to the directory name.")
    platform: str | None = Field(
        default=None, description="Triton platform, e.g. onnxruntime_onnx or ensemble."
    )
    backend: str | None = Field(default=None, description="Triton backend, e.g. onnxruntime.")
    max_batch_size: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Largest batch the model takes. > 0 adds a leading batch dimension to every "
            "input and output that dims does not list; 0 means no batching."
        ),
    )
    input: list[TensorSpec] | None = None
    output: list[TensorSpec] | None = None
    version_policy: VersionPolicy | None = None
    instance_group: list[InstanceGroup] | None = None
    dynamic_batching: DynamicBatching | None = Field(
        default=None, description="Turns on the dynamic batcher; {} takes Triton's defaults."
    )
    parameters: dict[str, str] | None = Field(
        default=None, description="Backend parameters, e.g. intra_op_thread_count."
    )
    default_model_filename: str | None = None
    ensemble_scheduling: EnsembleScheduling | None = None

    def to_proto(self) -> Any:
        """This spec as Triton's ``ModelConfig`` message."""
        data = self.model_dump(exclude_none=True, mode="json")
        if "parameters" in data:
            data["parameters"] = {k: {"string_value": v} for k, v in data["parameters"].items()}
        if "dynamic_batching" in data and "priority_queue_policy" in data["dynamic_batching"]:
            batching = data["dynamic_batching"]
            batching["priority_queue_policy"] = {
                str(k): v for k, v in batching["priority_queue_policy"].items()
            }
        message = ModelConfig()
        json_format.ParseDict(data, message)
        return message

    def to_pbtxt(self) -> str:
        return str(text_format.MessageToString(self.to_proto()))


def parse_yaml(text: str, source: str = "config.yaml") -> Any:
    """Parse the friendly YAML form into a ``ModelConfig``."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise errors.ModelLoadError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise errors.ModelLoadError(f"{source}: nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise errors.ModelLoadError(f"{source}: expected a mapping at the top level")
    params = data.get("parameters")
    if isinstance(params, dict):
        data["parameters"] = {
            k: (v["string_value"] if isinstance(v, dict) and "string_value" in v else str(v))
            for k, v in params.items()
        }
    try:
        return ModelConfigSpec.model_validate(data).to_proto()
    except ValidationError as exc:
        raise errors.ModelLoadError(f"{source}: {exc}") from exc
    except json_format.ParseError as exc:  # a value the proto cannot hold, e.g. over int32
        raise errors.ModelLoadError(f"{source}: {exc}") from exc


def parse_pbtxt(text: str, source: str = PBTXT) -> Any:
    """Parse Triton's protobuf text format."""
    message = ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise errors.ModelLoadError(f"{source}: {exc}") from exc
    except RecursionError:
        raise errors.ModelLoadError(f"{source}: nested too deeply to be a config") from None
    return message


def parse_json(text: str, source: str = "config") -> Any:
    """Parse the JSON form (the repository load API's ``config`` parameter)."""
    message = ModelConfig()
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(f"{source}: not a valid ModelConfig: {exc}") from exc
    except RecursionError:
        raise errors.InvalidArgument(f"{source}: nested too deeply to be a config") from None
    return message


def read(model_dir: Path) -> Any:
    """The model's config from its directory; an empty config when it has none."""
    pbtxt = model_dir / PBTXT
    if pbtxt.is_file():
        return parse_pbtxt(pbtxt.read_text(), str(pbtxt))
    for name in YAML_NAMES:
        path = model_dir / name
        if path.is_file():
            return parse_yaml(path.read_text(), str(path))
    return ModelConfig()


def to_dict(config: Any) -> dict[str, Any]:
    """JSON form with proto field names, as Triton's config endpoint returns it.

    protobuf's JSON mapping writes 64-bit integers as strings; Triton writes numbers, and
    clients such as perf_analyzer read ``dims`` as numbers, so convert them back.
    """
    result: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    _int64_to_numbers(config.DESCRIPTOR, result)
    return result


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _int64_to_numbers(descriptor: Any, data: dict[str, Any]) -> None:
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for k, v in value.items():
                    if value_field.message_type is not None:
                        _int64_to_numbers(value_field.message_type, v)
                    elif value_field.type in _INT64_TYPES:
                        value[k] = int(v)
            elif isinstance(value, list):
                for item in value:
                    _int64_to_numbers(field.message_type, item)
            else:
                _int64_to_numbers(field.message_type, value)
        elif field.type in _INT64_TYPES:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)


def validate(config: Any) -> None:
    """Semantic checks the schema cannot express, with errors that say what to change."""
    where = f"model '{config.name}'"
    if config.max_batch_size < 0:
        raise errors.ModelLoadError(f"{where}: max_batch_size must be >= 0")
    seen: set[str] = set()
    for tensor in list(config.input) + list(config.output):
        if tensor.name in seen:
            raise errors.ModelLoadError(f"{where}: tensor name '{tensor.name}' appears twice")
        seen.add(tensor.name)
        if any(d < -1 or d == 0 for d in tensor.dims):
            raise errors.ModelLoadError(
                f"{where}: tensor '{tensor.name}' dims {list(tensor.dims)}: each dim must be "
                "positive or -1 (variable)"
            )
    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        if config.max_batch_size == 0 and config.platform != "ensemble":
            raise errors.ModelLoadError(
                f"{where}: dynamic_batching needs max_batch_size > 0 (the model must accept "
                "a leading batch dimension)"
            )
        for size in batching.preferred_batch_size:
            if size < 1 or size > config.max_batch_size:
                raise errors.ModelLoadError(
                    f"{where}: preferred_batch_size {size} must be between 1 and "
                    f"max_batch_size ({config.max_batch_size})"
                )
        levels = batching.priority_levels
        if levels and not 1 <= batching.default_priority_level <= levels:
            raise errors.ModelLoadError(
                f"{where}: default_priority_level must be between 1 and priority_levels ({levels})"
            )
        for level in batching.priority_queue_policy:
            if not 1 <= level <= levels:
                raise errors.ModelLoadError(
                    f"{where}: priority_queue_policy level {level} is outside 1..{levels}"
                )
    for group in config.instance_group:
        if group.count < 0:
            raise errors.ModelLoadError(f"{where}: instance_group count must be >= 1")
