"""Creating a container's process from its spec, as a kubelet and a runtime together do.

``launch()`` turns a container spec and its image into a ``processes.Launch``: the
environment the kubelet builds (``environment``) merged under the image's, with PATH,
HOSTNAME, HOME and TMPDIR and nothing of the sandbox's own; the command line from the spec
and the image, ``$(VAR)``-expanded and with container paths translated (``mounts``); the
working folder; the user and groups of the securityContext; the binds of its mount
namespace; and its cgroups. A spec that cannot be created raises
``environment.ConfigError`` (CreateContainerConfigError) or ``mounts.CreateError``
(CreateContainerError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from polyserve_sandbox.kubelet import environment, images, mounts, processes
from polyserve_sandbox.kubelet.backoff import Backoff, Clock
from polyserve_sandbox.kubelet.cgroups import Cgroups
from polyserve_sandbox.kubelet.layout import PodLayout
from polyserve_sandbox.kubelet.sources import Resolver
from polyserve_sandbox.kubelet.volumes import Volume

Obj = dict[str, Any]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Context:
    """What the containers of one pod share."""

    pod: Obj
    pod_ip: str
    host_ip: str
    layout: PodLayout
    images: images.ImageMap
    resolver: Resolver
    clock: Clock
    backoff: Backoff
    as_root: bool
    cgroups: Cgroups | None
    event: Callable[[str, str, str], None]
    changed: Callable[[], None]
    volumes: dict[str, Volume] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    poked: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ref(self) -> str:
        """The pod as the kubelet names it in messages: ``name_namespace(uid)``."""
        meta = self.pod["metadata"]
        return f"{meta['name']}_{meta.get('namespace', 'default')}({meta.get('uid', '')})"

    @property
    def spec(self) -> Obj:
        spec: Obj = self.pod.get("spec", {})
        return spec

    async def pause(self, seconds: float, *, wake_on_poke: bool = True) -> bool:
        """Sleep; False as soon as the pod stops. A poke (sources changed) ends it early."""
        waits = [asyncio.ensure_future(self.stopping.wait())]
        if wake_on_poke:
            waits.append(asyncio.ensure_future(self.poked.wait()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when="FIRST_COMPLETED")
        finally:
            for task in waits:
                task.cancel()
        return not self.stopping.is_set()


def user(pod_spec: Obj, container: Obj, ref: str) -> processes.User | None:
    pod_sc, own = pod_spec.get("securityContext") or {}, container.get("securityContext") or {}
    uid, gid = (
        own.get("runAsUser", pod_sc.get("runAsUser")),
        own.get("runAsGroup", pod_sc.get("runAsGroup")),
    )
    if own.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise environment.ConfigError(
            f'container\'s runAsUser breaks non-root policy (pod: "{ref}", container: '
            f"{container['name']})"
        )
    if uid is None and gid is None:
        return None
    groups = [
        g for g in [pod_sc.get("fsGroup"), *pod_sc.get("supplementalGroups", [])] if g is not None
    ]
    return processes.User(int(uid or 0), int(gid or 0), tuple(int(g) for g in groups))


def launch(
    ctx: Context, spec: Obj, image: images.Image
) -> tuple[processes.Launch, mounts.ContainerFs]:
    """The process of one container run, and the file system view it was built with."""
    name = spec["name"]
    declared = environment.container_env(
        ctx.pod, spec, pod_ip=ctx.pod_ip, host_ip=ctx.host_ip, resolver=ctx.resolver
    )
    account = user(ctx.spec, spec, ctx.ref)
    read_only_root = bool((spec.get("securityContext") or {}).get("readOnlyRootFilesystem"))
    fs = mounts.ContainerFs(
        spec, ctx.volumes, ctx.layout.container(name), declared, read_only_root=read_only_root
    )
    binds = fs.prepare(as_root=ctx.as_root)
    argv = image.command_line(
        environment.expand_all(spec.get("command"), declared),
        environment.expand_all(spec.get("args"), declared),
    )
    if not argv:
        raise mounts.CreateError(
            f'failed to generate container "{name}" spec: no command specified'
        )
    image_env = image.environment(ctx.pod_ip)
    base_path = image_env.pop("PATH", DEFAULT_PATH)
    env = {
        "PATH": ":".join([*image.path, base_path]),
        "HOSTNAME": ctx.spec.get("hostname") or ctx.pod["metadata"]["name"],
        "HOME": str(fs.home),
        **image_env,
        **{key: fs.env_value(value) for key, value in declared.items()},
    }
    env.setdefault("TMPDIR", fs.tmpdir)
    cgroup_dirs: list[str] = []
    if ctx.cgroups is not None:
        cgroup_dirs = ctx.cgroups.prepare(ctx.layout.key, name, spec.get("resources") or {})
    process = processes.Launch(
        argv=[fs.token(word) for word in argv],
        env=env,
        cwd=fs.working_dir(spec.get("workingDir")),
        isolate=ctx.as_root,
        binds=binds,
        read_only_root=read_only_root,
        user=account if ctx.as_root else None,
        cgroups=cgroup_dirs,
        reach=[str(mount.host) for mount in fs.mounts],
    )
    return process, fs
