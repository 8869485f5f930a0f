"""Process settings of the worker: Triton's flag names, also settable as POLYSERVE_* variables.

This module is the one place that knows the worker's flags: their names, types, defaults and
help all come from ``WorkerSettings``. ``parse`` reads a command line (``main`` calls it, and
so do the operator's tests, on every Deployment the operator renders); ``to_args`` writes one
(the operator renders every pod's arguments through it, never as literals). Parsed once in
``main()`` and passed down; nothing else reads the environment or argv.
Precedence: command-line flag, then environment variable, then the default here.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, TypeAdapter, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "POLYSERVE_"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    model_repository: Path = Field(
        description="Directory in Triton's layout: <repo>/<model>/<version>/<file>."
    )
    http_port: int = Field(default=8000, ge=0, le=65535, description="OIP REST port (Triton's).")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="OIP gRPC port (Triton's).")
    metrics_port: int = Field(
        default=8002, ge=0, le=65535, description="Prometheus /metrics port (Triton's)."
    )
    host: str = Field(
        default="0.0.0.0",
        description=(
            "Address every server binds. In a pod, all of them (0.0.0.0); the local fleet "
            "(polyserve sandbox) sets POLYSERVE_HOST to the pod's own loopback address."
        ),
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        default="none",
        description=(
            "none: load everything at start; poll: also follow changes on disk; explicit: "
            "load only --load-model at start, then through the repository API."
        ),
    )
    load_model: tuple[str, ...] = Field(
        default=(), description="Models to load at start in explicit mode ('*' for all)."
    )
    required_model: tuple[str, ...] = Field(
        default=(),
        description=(
            "Models the server's readiness follows. Default: the models loaded at start. "
            "Loading any other model later never flips readiness."
        ),
    )
    strict_readiness: bool = Field(
        default=True,
        description="Ready only while every required model is ready (Triton's default).",
    )
    exit_on_error: bool = Field(
        default=True,
        description=(
            "Exit with status 1 when a model fails to load at start (Triton's default), so "
            "that a pod crash-loops with the reason in its termination message instead of "
            "staying unready until the startup probe gives up. false keeps serving the rest."
        ),
    )
    exit_timeout_secs: float = Field(
        default=30.0,
        ge=0,
        description=(
            "On SIGTERM, the whole shutdown in seconds, from the signal to the exit: requests "
            "on open connections are served until then and what is still running at the end "
            "is answered 503. Keep it under the pod's terminationGracePeriodSeconds (30 s by "
            "default) minus its preStop delay."
        ),
    )
    exit_idle_secs: float = Field(
        default=1.0,
        ge=0,
        description=(
            "On SIGTERM, how long in seconds an open HTTP keep-alive connection may stay idle "
            "before the worker closes it. Busy connections close after their next response "
            "(sent with Connection: close); an idle one is given this long to carry a request "
            "its client may already be sending, since closing it then would drop that request. "
            "1 s is far longer than a client in a request loop needs."
        ),
    )
    http_idle_timeout_secs: float = Field(
        default=75.0,
        gt=0,
        description=(
            "Seconds an HTTP connection may go without a complete request header: the idle "
            "time allowed between keep-alive requests, and the time a client has to send its "
            "headers (aiohttp measures both from the end of the previous request), so a client "
            "that sends headers slowly is cut off. 75 s outlasts the 60 s idle timeouts of "
            "common proxies and load balancers, so they close their idle connections first."
        ),
    )
    http_body_timeout_secs: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Seconds a request body may take to arrive in full (408 after that, and the "
            "connection closes). 60 s carries the default 64 MiB limit at ~9 Mbit/s; a slow "
            "client cannot hold a connection and its buffer for longer."
        ),
    )
    max_request_elements: int = Field(
        default=1 << 26,
        gt=0,
        description=(
            "Most tensor elements one request may carry, summed over its inputs (shared memory "
            "ones too); a single dimension above it is refused as well (400). Checked against "
            "the shape before anything is allocated. 2^26 is 256 MiB of FP32, four times the "
            "default body limit: raise it for larger tensors in shared memory."
        ),
    )
    max_request_bytes: int = Field(
        default=1 << 28,
        gt=0,
        description=(
            "Most bytes one request may decode into tensors, summed over its inputs (400 "
            "above it). 256 MiB: four times the default body limit, which is what JSON "
            "numbers can expand to. Inputs read in place from shared memory are not counted: "
            "their region bounds them."
        ),
    )
    max_model_instances: int = Field(
        default=64,
        gt=0,
        description=(
            "Most backend instances one model may load, counted over its instance groups, "
            "their GPUs and its versions (a load above it fails with 400). Each instance is "
            "a framework session with its own memory and thread; 64 covers 8 GPUs x 4 "
            "instances x 2 versions."
        ),
    )
    max_stream_in_flight: int = Field(
        default=64,
        gt=0,
        description=(
            "Most requests one gRPC ModelStreamInfer stream may have decoded, running or "
            "answered but not yet sent. Past it the worker stops reading the stream until the "
            "client reads answers, so HTTP/2 flow control holds the client back instead of "
            "the worker buffering without limit."
        ),
    )
    max_shm_regions: int = Field(
        default=256,
        gt=0,
        description=(
            "Most shared memory regions registered at once (400 above it). Each region keeps "
            "a file descriptor open; 256 leaves most of a common 1024 descriptor limit to "
            "connections and model files."
        ),
    )
    max_shm_bytes: int = Field(
        default=1 << 34,
        gt=0,
        description=(
            "Most bytes of shared memory mapped at once over all registered regions (400 "
            "above it). 16 GiB: more than a node's /dev/shm usually holds, a bound on what "
            "clients can make the worker map, not a reservation."
        ),
    )
    repository_poll_secs: float = Field(
        default=15.0, gt=0, description="Rescan interval in poll mode (Triton's default)."
    )
    http_max_input_size: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Largest accepted request body in bytes (Triton's 64 MiB default).",
    )
    allow_client_shm: bool = Field(
        default=False,
        description=(
            "Serve the system shared memory extension. Off by default, as in Triton: a "
            "registered region gives clients on this node access to worker memory mappings."
        ),
    )
    mirror_config: Path | None = Field(
        default=None,
        description=(
            "Request mirroring settings (YAML): the models whose live requests are copied to "
            "a canary's gRPC address, and how the two answers are compared; agreement is "
            "exported as polyserve_mirror_* metrics, so a canary that answers 200 with wrong "
            "numbers fails its analysis. Clients only ever get this worker's answer and never "
            "wait for a copy. The file may be absent, appear, change or disappear at any time "
            "(a mounted ConfigMap): it is re-read every second and followed without a "
            "restart. Unset: no mirroring."
        ),
    )
    http_transport: Literal["httptools", "aiohttp"] = Field(
        default="httptools",
        description=(
            "What serves the HTTP port. httptools, the default: the worker's own lean "
            "HTTP/1.1 server on llhttp's parser (PyPI httptools), about 40 us less worker "
            "CPU per request than aiohttp, a fifth of a small model's inference. aiohttp: "
            "the mature asyncio server it replaces. Both serve the same routes with the same "
            "answers, close slow clients and bound what a request can allocate the same way "
            "(the worker's tests run on both)."
        ),
    )
    grpc_transport: Literal["auto", "native", "aio"] = Field(
        default="aio",
        description=(
            "What serves the gRPC port. native: HTTP/2 in Rust threads outside the GIL "
            "(PyPI pygrpc-native, in the worker extra), calls handed to Python in batches: "
            "about half the worker CPU per small inference of aio. aio: grpc.aio, the "
            "default: native cannot send GOAWAY when a drain starts (only when it closes), so "
            "a client that keeps its connection through a rollout gets one UNAVAILABLE at "
            "the end of the old pod's drain; choose native where clients retry UNAVAILABLE. "
            "auto: native where it is installed. ModelStreamInfer is served by grpc.aio "
            "either way (the native front forwards it in-process). Unlike aio, native reads a "
            "message over --http-max-input-size whole (gRPC allows up to 4 GiB) before it "
            "refuses it RESOURCE_EXHAUSTED: choose aio where untrusted clients reach the port."
        ),
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description=(
            "PEM certificate (chain) that the HTTP and gRPC ports serve over TLS, with "
            "--tls-key-file. Unset: plain HTTP and gRPC. The files are checked at most once a "
            "second as connections arrive, and a renewed pair (a cert-manager Secret the "
            "kubelet updates) is served to new connections without a restart. The metrics "
            "port stays plain HTTP. gRPC over TLS is served by grpc.aio: auto picks it, and "
            "native (no TLS in pygrpc-native) is refused."
        ),
    )
    tls_key_file: Path | None = Field(
        default=None, description="PEM private key of --tls-cert-file."
    )
    tls_client_ca_file: Path | None = Field(
        default=None,
        description=(
            "PEM CA certificates: with TLS on, clients of the HTTP and gRPC ports must present "
            "a certificate one of them signed (mutual TLS). Unset: any client. A kubelet's "
            "HTTPS probe presents none, so a pod probed over HTTPS cannot require one."
        ),
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description=(
            "Worker processes serving the same ports (SO_REUSEPORT: the kernel spreads "
            "connections over them), each with its own event loop, batcher and model "
            "instances; use one per core or two the pod may use. Batches form per process, "
            "so more processes also mean smaller batches at the same load. The metrics port "
            "serves the first process's metrics (the others log their own port at start); "
            "a statistics request describes the process that answered it."
        ),
    )
    log_verbose: int = Field(default=0, ge=0, description="1 logs each batch and why it closed.")

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> WorkerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        if self.tls and self.grpc_transport == "native":
            raise ValueError(
                "the native gRPC front (pygrpc-native) cannot serve TLS: use "
                "--grpc-transport=auto or aio with --tls-cert-file"
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether the HTTP and gRPC ports serve TLS."""
        return self.tls_cert_file is not None


def flag(field: str) -> str:
    """The command-line flag of a settings field: ``http_port`` -> ``--http-port``."""
    return "--" + field.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _is_repeated(annotation: Any) -> bool:
    return get_origin(annotation) is tuple


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser(prog: str = "polyserve-worker") -> argparse.ArgumentParser:
    """The worker's command line, one flag per settings field."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Serve a Triton-layout model repository over the Open Inference Protocol. Every "
            f"flag can also be set as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}HTTP_PORT). "
            "'polyserve-worker fetch URI DEST' downloads a model artifact."
        ),
    )
    for name, info in WorkerSettings.model_fields.items():
        annotation = info.annotation
        default = "required" if info.is_required() else f"default {info.default!r}"
        help_text = f"{info.description} ({default})"
        if _is_bool(annotation):
            # Triton's form is --flag=<boolean>; a bare --flag also means true.
            p.add_argument(flag(name), dest=name, type=_bool, nargs="?", const=True, help=help_text)
        elif _is_repeated(annotation):
            p.add_argument(flag(name), dest=name, action="append", help=help_text + "; repeatable")
        elif get_origin(annotation) is Literal:
            p.add_argument(flag(name), dest=name, choices=get_args(annotation), help=help_text)
        else:
            p.add_argument(flag(name), dest=name, help=help_text)
    return p


def parse(argv: Sequence[str]) -> WorkerSettings:
    """Settings from a command line, then the environment, then the defaults.

    Raises ``SystemExit`` (argparse) for unknown flags and pydantic's ``ValidationError``
    for values out of range.
    """
    args = parser().parse_args(list(argv))
    given = {key: value for key, value in vars(args).items() if value is not None}
    for key, value in given.items():
        if isinstance(value, list):
            given[key] = tuple(value)
    return WorkerSettings(**given)


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    """One field's validator, built once: building it costs more than a whole render, and
    the operator renders every model's flags on each of its reconciles."""
    info = WorkerSettings.model_fields.get(name)
    if info is None:
        raise ValueError(
            f"the worker has no setting {name!r} (flags: {sorted(WorkerSettings.model_fields)})"
        )
    kind: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(kind)


def _check(name: str, value: Any) -> Any:
    return _adapter(name).validate_python(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_args(values: Mapping[str, Any]) -> list[str]:
    """The command line that gives ``values`` (settings field -> value), one ``--flag=value``
    token per value and per repetition. Each value is validated as the worker will validate
    it, so a value the worker would refuse fails here, where it is rendered."""
    args: list[str] = []
    for name, value in values.items():
        checked = _check(name, value)
        items = checked if isinstance(checked, tuple) else (checked,)
        args += [f"{flag(name)}={_text(item)}" for item in items]
    return args
