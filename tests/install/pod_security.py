"""The Pod Security Standards' ``baseline`` and ``restricted`` profiles, as checks on a pod spec.

What a namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` admits, control by
control, as the Kubernetes documentation lists them (concepts/security/pod-security-standards,
the "latest" version of the policy); no maintained Python library implements them (the
reference is Go: k8s.io/pod-security-admission). ``violations(pod_spec, annotations)`` returns
one line per failed control, empty when the pod would be admitted; ``templates(objects)`` finds
every pod template in a list of rendered objects (Pods, Deployments, StatefulSets, ...).

Stricter than the standard in one place: a volume type the restricted list does not name is
refused even if a later Kubernetes allows it (the ``image`` volume of 1.33), so a pod that
passes here passes on every version we support. Windows-only fields are not checked (no
Windows pools).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

Obj = dict[str, Any]

#: Capabilities baseline lets a container add (the container runtimes' default set).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: The only capability restricted lets a container add back after dropping ALL.
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Namespaced sysctls baseline allows.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
#: Volume sources restricted allows (besides none of the node's or network storage's own).
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SECURE_SECCOMP = ("RuntimeDefault", "Localhost")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    """Every container of a pod spec, init and ephemeral ones too, with its path."""
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def _baseline(spec: Obj, annotations: Obj) -> Iterator[str]:
    pod = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"host namespaces: spec.{field} is true"
    if (pod.get("windowsOptions") or {}).get("hostProcess"):
        yield "HostProcess: spec.securityContext.windowsOptions.hostProcess is true"
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield f"hostPath volumes: volume {volume.get('name')} is a hostPath"
    for name in (s.get("name") for s in pod.get("sysctls") or []):
        if name not in SAFE_SYSCTLS:
            yield f"sysctls: {name} is not a safe sysctl"
    yield from _selinux("spec.securityContext", pod)
    yield from _apparmor("spec.securityContext", pod)
    if (pod.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield "seccomp: spec.securityContext.seccompProfile.type is Unconfined"
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            yield f"AppArmor: annotation {key} is {value}"
    for where, container in containers(spec):
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            yield f"privileged: {where} is privileged"
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            yield f"HostProcess: {where} is a HostProcess container"
        added = set((context.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            yield f"capabilities: {where} adds {sorted(added - BASELINE_CAPABILITIES)}"
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield f"host ports: {where} uses hostPort {port['hostPort']}"
        yield from _selinux(where, context)
        yield from _apparmor(where, context)
        if context.get("procMount", "Default") != "Default":
            yield f"/proc mount: {where} has procMount {context['procMount']}"
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"seccomp: {where} is Unconfined"


def _selinux(where: str, context: Obj) -> Iterator[str]:
    options = context.get("seLinuxOptions") or {}
    if options.get("type", "") not in SELINUX_TYPES:
        yield f"SELinux: {where} has type {options['type']}"
    for field in ("user", "role"):
        if options.get(field):
            yield f"SELinux: {where} sets {field}"


def _apparmor(where: str, context: Obj) -> Iterator[str]:
    kind = (context.get("appArmorProfile") or {}).get("type")
    if kind is not None and kind not in ("RuntimeDefault", "Localhost"):
        yield f"AppArmor: {where} has profile {kind}"


def _restricted(spec: Obj) -> Iterator[str]:
    pod = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUMES:
            yield f"volume types: volume {volume.get('name')} is a {sorted(sources)}"
    pod_non_root = pod.get("runAsNonRoot")
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    if pod_non_root is False:
        yield "running as non-root: spec.securityContext.runAsNonRoot is false"
    if pod.get("runAsUser") == 0:
        yield "running as non-root user: spec.securityContext.runAsUser is 0"
    for where, container in containers(spec):
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"privilege escalation: {where} does not set allowPrivilegeEscalation false"
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod_non_root is not True):
            yield f"running as non-root: {where} may run as root (runAsNonRoot not true)"
        if context.get("runAsUser") == 0:
            yield f"running as non-root user: {where} has runAsUser 0"
        seccomp = (context.get("seccompProfile") or {}).get("type")
        inherited = seccomp is None and pod_seccomp in SECURE_SECCOMP
        if seccomp not in SECURE_SECCOMP and not inherited:
            yield f"seccomp: {where} has no RuntimeDefault or Localhost profile"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"capabilities: {where} does not drop ALL"
        added = set(capabilities.get("add") or [])
        if added - RESTRICTED_CAPABILITIES:
            yield f"capabilities: {where} adds {sorted(added - RESTRICTED_CAPABILITIES)}"


def violations(spec: Obj, annotations: Obj | None = None, level: str = "restricted") -> list[str]:
    """What the profile ``level`` (baseline or restricted) refuses in a pod spec."""
    found = list(_baseline(spec, annotations or {}))
    if level == "restricted":
        found += _restricted(spec)
    return found


def templates(objects: Iterable[Obj]) -> Iterator[tuple[str, Obj, Obj]]:
    """``(name, pod spec, pod annotations)`` of every Pod and pod template in ``objects``."""
    for obj in objects:
        kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
        if kind == "Pod":
            meta = obj.get("metadata") or {}
            yield f"Pod/{name}", obj.get("spec") or {}, meta.get("annotations") or {}
        elif kind in POD_KINDS:
            template = (obj.get("spec") or {}).get("template") or {}
            meta = template.get("metadata") or {}
            yield f"{kind}/{name}", template.get("spec") or {}, meta.get("annotations") or {}
