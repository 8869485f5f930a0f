"""Pods as processes: the sandbox's kubelet and container runtime.

Layers, top to bottom (a module imports only those below it):

- ``node``: the glue to the API server's store (``Kubelet``): watches Pods bound to its
  node, writes statuses and Events, graceful deletion, ``pods/log``.
- ``pods``: one pod's life (``PodRuntime``), independent of any API server: volumes, init
  containers in order, containers, termination, the pod ``status`` (``statuses``).
- ``containers``: one container's rounds (back-off, pull, create, run, restart), its
  probes (``probes``) and hooks.
- ``creating``: a container spec and its image -> the process to launch, with
  ``environment`` (the kubelet's env and ``$(VAR)`` rules), ``mounts`` (container paths ->
  host paths, mount points as runc makes or refuses them), ``volumes``, ``images``.
- ``processes`` and ``launcher``: the runtime: namespaces, users, binds, cgroups
  (``cgroups``), the parent-death signal; ``launcher`` runs in the child on the standard
  library alone.
- ``backoff`` (time and the kubelet's back-off), ``logs``, ``layout`` (where a pod lives on
  disk) and ``sources`` (the ``Resolver`` a pod reaches ConfigMaps, Secrets and claims with).
"""
