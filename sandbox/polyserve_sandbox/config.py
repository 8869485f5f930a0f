"""The sandbox's configuration: ``DIR/sandbox.yaml``, all of it optional.

```yaml
network: 127.77.0.0/16          # pod IPs and Service cluster IPs (chosen at the first `up`)
apiPort: 0                      # the API server's port on 127.0.0.1 (0: any free port)
operator: {enabled: true, env: {POLYSERVE_OPERATOR_STATUS_INTERVAL_SECONDS: "2"}}
claims: {models: /srv/models}   # PersistentVolumeClaim name (or NAMESPACE/NAME) -> folder
nodes:                          # extra nodes for placement tests (pods still run here)
- {name: big-xeon, labels: {pool: big}, allocatable: {cpu: "64", memory: 256Gi}}
images:                         # more images, tried before the built-in worker images
- {pattern: "registry.example/tool:*", path: [/opt/tool/bin], entrypoint: [tool]}
backoff: {initialSeconds: 10, maxSeconds: 300}
pods: run                       # run: pods are processes; hollow: reported ready, none started
audit: false                    # true: every API request in logs/audit.log (who, verb, object)
faults:                         # refused requests and broken watches (apiserver/faults.py)
  seed: 7
  rules: [{verbs: [PATCH, APPLY], conflict: 0.05, throttle: 0.05, error: 0.05}]
  watches: {close: 0.3, expire: 0.3}
```

``POLYSERVE_SANDBOX_FAULTS`` (a fault plan as JSON or YAML) replaces ``faults:`` when set;
``fleet.main`` reads it, nothing else reads the environment.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from polyserve_sandbox.apiserver import faults as apifaults


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class NodeConfig(_Model):
    """A declared node: its pods run on this machine like any other."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[dict[str, Any]] = Field(default_factory=list)
    allocatable: dict[str, str] = Field(default_factory=dict)


class ImageConfig(_Model):
    """What a container of an image (a glob pattern) runs here."""

    pattern: str
    path: list[str] = Field(default_factory=list)
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class OperatorConfig(_Model):
    """The operator the sandbox starts (the real one, as a process)."""

    enabled: bool = True
    env: dict[str, str] = Field(
        default_factory=lambda: {"POLYSERVE_OPERATOR_STATUS_INTERVAL_SECONDS": "2"},
        description="Operator settings (POLYSERVE_OPERATOR_*); status every 2 s here.",
    )


class BackoffConfig(_Model):
    """CrashLoopBackOff timing (the kubelet's: 10 s doubling to 300 s)."""

    initial_seconds: float = 10.0
    max_seconds: float = 300.0


class SandboxConfig(_Model):
    network: str | None = None
    api_port: int = 0
    operator: OperatorConfig = Field(default_factory=OperatorConfig)
    claims: dict[str, Path] = Field(default_factory=dict)
    nodes: list[NodeConfig] = Field(default_factory=list)
    images: list[ImageConfig] = Field(default_factory=list)
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    machine_node: bool = True
    """Register this machine as the Xeon-pool node (and as a GPU node when it has GPUs)."""
    pods: Literal["run", "hollow"] = "run"
    """``run``: pods are real processes; ``hollow``: every node's kubelet reports its pods
    running and ready without starting anything (``hollow``), to measure the control plane
    at a scale this machine could not run."""
    faults: apifaults.FaultPlan | None = None
    """Faults the API server injects (``apiserver.faults``); none by default."""
    audit: bool = False
    """Write every API request to ``logs/audit.log`` (``apiserver.auditing``): who asked for
    what, as a real API server's audit log says it."""

    def claim(self, namespace: str, claim: str) -> Path | None:
        """The folder that plays a PersistentVolumeClaim, if the config names one."""
        return self.claims.get(f"{namespace}/{claim}") or self.claims.get(claim)


def load(path: Path, *, faults: str | None = None) -> SandboxConfig:
    """The config in ``path`` (defaults when the file does not exist); ``faults``, a fault
    plan as JSON or YAML (``POLYSERVE_SANDBOX_FAULTS``), replaces the file's."""
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    if faults:
        data["faults"] = yaml.safe_load(faults)
    return SandboxConfig.model_validate(data)


def choose_network() -> str:
    """A /16 of the loopback range for one sandbox: pods from its low half, Services from
    its high half. Chosen at random so two sandboxes on one machine rarely meet."""
    return f"127.{random.randint(16, 250)}.0.0/16"
