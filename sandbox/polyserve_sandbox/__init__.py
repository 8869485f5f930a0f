"""The local fleet (``polyserve sandbox``): a Kubernetes-shaped environment on one machine.

For development, demos and the e2e suite; not a Kubernetes replacement (production runs on
a real cluster). One process, one event loop, holds every part:

- ``apiserver``: an emulated API server over HTTP on 127.0.0.1: objects keyed in memory,
  resourceVersions, watches, server-side apply, label/field selectors, owner-reference
  garbage collection, CRDs, and what kubectl needs (discovery, tables, PUT).
- ``nodes``: nodes that reflect the machine (NFD labels from the real CPU flags, allocatable
  from the machine; a GPU node only when ``nvidia-smi`` finds GPUs) plus declared ones.
- ``scheduling``: node selectors, affinity, tolerations and requests against allocatable;
  Unschedulable with kube-scheduler's message when nothing fits.
- ``deployments``: Deployments -> ReplicaSets -> Pods, rolling updates, status and conditions.
- ``kubelet``: pods as processes, each on its own loopback address, with init containers,
  volumes, probes, restarts and logs.
- ``services``: a local address per Service port that forwards to ready endpoints.
- ``gateways``: Gateway API Gateways on addresses of their own, routing every HTTP request
  and gRPC call by HTTPRoute and GRPCRoute weights to the Services' ready endpoints.

The operator's reconcile path never imports this package (an import-linter contract).
"""
