"""The request mirroring file (``--mirror-config``): its format, parsed and rendered here.

The operator renders it into a ConfigMap mounted in every stable worker pod; the worker
(``mirroring``) follows it. Both go through this module, so the format has one definition:
pydantic models with ``extra="forbid"`` (a typo is an error, not a silently ignored key)
and camelCase names, as in the CRDs. YAML, so JSON is accepted too::

    models:
      mlp:                        # a model this worker serves; its requests are copied
        target: 10.1.2.3:8001     # the canary's gRPC address (a Service address)
        model: mlp                # its name at the target (default: the same)
        revision: 5abf1ed6dc      # a label on the metrics
        percent: 10               # share of requests copied (default 100)
        rate: 50                  # at most this many copies per second (optional)
        queue: 64                 # copies waiting to be sent; full: dropped
        timeoutMs: 2000           # per copied request
        compare:                  # per output; "*" for the outputs not named
          "*": {maxAbsDiff: 1.0e-4, maxRelDiff: 1.0e-3}
          PROBABILITIES: {top1: true}
        tls:                      # the canary serves TLS (absent: plain gRPC)
          serverName: mlp.shop.svc          # a name its certificate carries
          caFile: /etc/ca/ca.crt            # its CA (default: the ca.crt beside this
                                            # worker's own certificate, else public roots)

Nothing here does I/O or knows about gRPC, so the operator imports it for free.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from polyserve_worker import comparing

#: A ConfigMap holds at most 1 MiB; a larger file is refused.
MAX_FILE_BYTES = 1024 * 1024

_TARGET = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


class MirrorTls(BaseModel):
    """How a stable pod verifies a canary that serves TLS."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    server_name: str = Field(
        min_length=1, max_length=253, description="A DNS name the canary's certificate carries."
    )
    ca_file: str | None = Field(
        default=None,
        description=(
            "PEM file of the CA that signed it; absent: the ca.crt beside this worker's own "
            "--tls-cert-file (cert-manager's Secret layout), else the public roots."
        ),
    )


class ModelMirror(BaseModel):
    """Where one model's requests are copied and how they are compared."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    target: str = Field(description="The canary's gRPC address, host:port (a Service address).")
    model: str | None = Field(
        default=None, description="The model's name at the target (default: the same name)."
    )
    revision: str = Field(default="", description="The canary's revision: a label on the metrics.")
    percent: float = Field(default=100.0, ge=0, le=100, description="Share of requests copied.")
    rate: float | None = Field(
        default=None, gt=0, description="At most this many copies per second (token bucket)."
    )
    queue: int = Field(
        default=64, ge=1, le=10_000, description="Copies waiting to be sent; when full, dropped."
    )
    timeout_ms: int = Field(default=2000, gt=0, le=600_000, description="Per copied request.")
    tls: MirrorTls | None = Field(
        default=None, description="The canary serves TLS (absent: plain gRPC)."
    )
    compare: dict[str, comparing.Rule] = Field(
        default_factory=dict,
        description="Rule per output name; '*' for outputs not named (see comparing).",
    )

    @field_validator("target")
    @classmethod
    def _host_port(cls, value: str) -> str:
        match = _TARGET.match(value)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"target must be host:port, got {value!r}")
        return value

    def rule_for(self, output: str) -> comparing.Rule | None:
        return self.compare.get(output, self.compare.get("*"))

    def describe(self, model: str) -> str:
        parts = [f"{self.percent:g}% of requests"]
        if self.rate is not None:
            parts.append(f"at most {self.rate:g}/s")
        if self.tls is not None:
            parts.append(f"TLS as {self.tls.server_name}")
        revision = f", revision {self.revision}" if self.revision else ""
        return (
            f"model '{model}' -> {self.target} (model '{self.model or model}'{revision}; "
            f"{', '.join(parts)})"
        )


class MirrorConfig(BaseModel):
    """The settings file: the models whose requests are copied, by the name served here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelMirror] = Field(default_factory=dict)


def parse(text: str) -> MirrorConfig:
    """The settings in ``text`` (YAML or JSON); empty text means no mirroring.

    Raises ``ValueError`` saying what is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from exc
    if doc is None:
        return MirrorConfig()
    return MirrorConfig.model_validate(doc)


def render(config: MirrorConfig) -> str:
    """The file that ``parse`` reads back as ``config``: camelCase names, defaults left
    out (so a later worker's defaults apply), keys in a stable order."""
    doc: dict[str, Any] = config.model_dump(by_alias=True, exclude_defaults=True)
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
