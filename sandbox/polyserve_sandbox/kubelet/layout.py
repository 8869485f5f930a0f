"""Where a pod lives on disk (the sandbox's ``/var/lib/kubelet/pods/<uid>``).

``root/<namespace>_<pod>_<uid>/``:
    ``volumes/<volume>/``          emptyDir, configMap, secret, projected, downwardAPI
    ``containers/<container>/``    per container: ``root/`` (the folders above its mount
                                   points), ``tmp/`` and ``home/`` (its writable layer),
                                   ``termination-log``, ``spec.json`` (what the launcher runs)
    ``logs/<container>/<n>.log``   stdout and stderr of the n-th run (n = restartCount)
``/dev/shm/polyserve-sandbox/<namespace>_<pod>_<uid>/<volume>/``: emptyDir medium Memory.

Volumes and containers go when the pod terminates; logs stay until the node glue decides
the pod object is gone (``kubectl logs`` of a finished pod still works).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHM_ROOT = Path("/dev/shm/polyserve-sandbox")


def pod_key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', 'default')}_{meta['name']}_{meta.get('uid', 'nouid')}"


class PodLayout:
    def __init__(self, root: Path, pod: dict[str, Any]) -> None:
        self.key = pod_key(pod)
        # Absolute: the links that play mount points and the translated paths a container
        # is given must resolve from any working directory (a relative fleet folder, e.g.
        # the default .polyserve-sandbox, gave links that pointed nowhere).
        self.dir = root.absolute() / self.key
        self.volumes = self.dir / "volumes"
        self.containers = self.dir / "containers"
        self.logs = self.dir / "logs"
        self.shm = SHM_ROOT / self.key

    def container(self, name: str) -> Path:
        return self.containers / name

    def container_logs(self, name: str) -> Path:
        return self.logs / name
