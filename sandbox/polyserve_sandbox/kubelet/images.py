"""Images are local commands: what a container of an image runs on this machine.

There is no registry and no image store in the sandbox. An ``ImageMap`` maps image
references (glob patterns, first match wins) to an ``Image``: the directories prepended to
PATH (where the image's programs live here), the image's ENTRYPOINT and CMD, and extra
environment variables, in which ``$(POD_IP)`` stands for the pod's address. A container's
command line is then built as a container runtime builds it from an image config:
``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replace CMD.

An image no pattern matches cannot be pulled: the container waits in ``ErrImagePull``, then
``ImagePullBackOff``, and the message says how to add the image to the map.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

POD_IP = "$(POD_IP)"
HINT = (
    "the sandbox has no image matching {reference!r}: add it to the sandbox's image map, "
    "under images: in the sandbox's sandbox.yaml, with the local command that plays it, "
    "e.g. images: [{{pattern: 'registry.example/app:*', path: [/opt/app/bin], "
    "entrypoint: [app]}}]"
)


class ImageNotFound(Exception):
    """No image in the map matches a reference; the message says how to add one."""

    def __init__(self, reference: str) -> None:
        super().__init__(HINT.format(reference=reference))
        self.reference = reference


@dataclass(frozen=True)
class Image:
    """What a container of one image runs here."""

    path: tuple[str, ...] = ()
    """Directories prepended to the container's PATH."""
    entrypoint: tuple[str, ...] = ()
    """The image's ENTRYPOINT: used unless the container gives ``command``."""
    cmd: tuple[str, ...] = ()
    """The image's CMD: default arguments, used unless the container gives ``command``
    or ``args``."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables the image sets (a container's own ``env`` wins); ``$(POD_IP)`` is the
    pod's address."""

    def command_line(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """The process's argv, as a runtime merges a container spec with an image config."""
        if command:
            return [*command, *(args or [])]
        if args:
            return [*self.entrypoint, *args]
        return [*self.entrypoint, *self.cmd]

    def environment(self, pod_ip: str) -> dict[str, str]:
        return {name: value.replace(POD_IP, pod_ip) for name, value in self.env.items()}

    def digest(self) -> str:
        """A stable id of this image config, shown as the container's ``imageID``."""
        payload = {
            "path": list(self.path),
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "env": dict(sorted(self.env.items())),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ImageMap:
    """Image reference patterns (``fnmatch`` globs) -> ``Image``; the first match wins."""

    def __init__(self, images: Mapping[str, Image] | Iterable[tuple[str, Image]] = ()) -> None:
        items = images.items() if isinstance(images, Mapping) else images
        self._images: list[tuple[str, Image]] = list(items)

    def with_image(self, pattern: str, image: Image) -> ImageMap:
        """A map where ``pattern`` comes first (it overrides the patterns already here)."""
        return ImageMap([(pattern, image), *self._images])

    def resolve(self, reference: str) -> Image:
        for pattern, image in self._images:
            if fnmatch.fnmatchcase(reference, pattern):
                return image
        raise ImageNotFound(reference)

    def image_id(self, reference: str) -> str:
        """``imageID`` as a runtime reports it: the repository and a digest."""
        repository = reference.split("@", 1)[0]
        last = repository.rsplit("/", 1)[-1]
        if ":" in last:
            repository = repository[: repository.rindex(":")]
        return f"{repository}@sha256:{self.resolve(reference).digest()}"

    def patterns(self) -> list[str]:
        return [pattern for pattern, _ in self._images]


def worker_image(prefix: Path | None = None) -> Image:
    """``polyserve-worker`` from this Python environment, as ``Dockerfile.worker`` runs it:
    ENTRYPOINT polyserve-worker, CMD --model-repository /models, and the worker binding the
    pod's own address (``POLYSERVE_HOST``, see ``polyserve_worker.settings``)."""
    bin_dir = (prefix or Path(sys.prefix)) / "bin"
    return Image(
        path=(str(bin_dir),),
        entrypoint=("polyserve-worker",),
        cmd=("--model-repository", "/models"),
        env={"POLYSERVE_HOST": POD_IP, "PYTHONUNBUFFERED": "1"},
    )


def default_images() -> ImageMap:
    """The map a fleet starts from: the project's worker images, any tag or registry."""
    worker = worker_image()
    return ImageMap([("ghcr.io/polyserve/worker:*", worker), ("*polyserve/worker*", worker)])
