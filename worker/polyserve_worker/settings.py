"""Process settings of the worker: Triton's flag names, also settable as POLYSERVE_* variables.

Parsed once in ``main()`` and passed down; nothing else reads the environment or argv.
Precedence: command-line flag, then environment variable, then the default here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLYSERVE_", frozen=True, extra="forbid")

    model_repository: Path = Field(
        description="Directory in Triton's layout: <repo>/<model>/<version>/<file>."
    )
    http_port: int = Field(default=8000, ge=0, le=65535, description="OIP REST port (Triton's).")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="OIP gRPC port (Triton's).")
    metrics_port: int = Field(
        default=8002, ge=0, le=65535, description="Prometheus /metrics port (Triton's)."
    )
    host: str = Field(default="0.0.0.0", description="Address every server binds.")
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
    exit_timeout_secs: float = Field(
        default=30.0,
        ge=0,
        description=(
            "On SIGTERM, how long in-flight requests may take to finish; keep it under the "
            "pod's terminationGracePeriodSeconds (30 s by default)."
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
    log_verbose: int = Field(default=0, ge=0, description="1 logs each batch and why it closed.")
