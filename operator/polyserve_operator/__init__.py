"""Polyserve's Kubernetes operator: InferenceModel and InferenceEnsemble into worker pods.

The layers: ``handlers`` (kopf decorators) call the pure ``render`` and ``conditions``
functions and the I/O modules ``k8s`` and ``observe``. ``api`` is the single source of the
CRDs. Importing any module here has no side effects; ``main`` parses settings once.
"""
