"""The emulated Kubernetes API server: an in-memory object store and its HTTP front.

In process, controllers use ``store.Store`` directly (same event loop, plain dicts in and out,
always copies); kubectl, helm, the ``kubernetes`` client and kopf use ``http.ApiServer``
over HTTP on 127.0.0.1. Objects are keyed in memory (by kind, namespace and name, with uid,
owner and namespace indexes) and the watch log is bounded, so a request costs the same
after a million requests as after ten.

Emulated, as a real server does it: uid/creationTimestamp/generation, one global
resourceVersion, generateName, namespaces (Active, Terminating, content deleted first),
optimistic concurrency (409), the four patch types (merge, JSON, strategic for built-ins,
server-side apply with managedFields and conflicts), ``status``/``scale``/``log``/``binding``
subresources, finalizers, graceful Pod deletion, owner-reference garbage collection
(Background, Foreground, Orphan), immutable ConfigMaps and Secrets, Secret ``stringData``,
label and field selectors, watches (resume from a resourceVersion, 410 Expired, bookmarks,
``sendInitialEvents``), CRDs (registration, Established, ``openAPIV3Schema`` defaults,
pruning, validation and ``fieldValidation=Strict``, and their CEL rules,
``x-kubernetes-validations``, with ``oldSelf`` on updates), ``dryRun=All``, discovery
(legacy and aggregated), OpenAPI v2/v3 as kubectl needs them, and server-side Tables
(kubectl get).

Not emulated: admission webhooks (ValidatingWebhookConfigurations are stored, never called:
in-process admission hooks stand in), authentication and RBAC (every request is allowed;
Roles are stored only), protobuf bodies beyond what ``kubectl create <kind>`` sends,
aggregated API servers, CRD conversion between versions, the field-level validation of
built-in kinds, exec/attach/port-forward, and following logs.

Modules: ``store`` (the verbs), ``writing`` (the write path), ``collecting`` (deletion and
garbage collection), ``applying`` (server-side apply), ``patching``, ``schemas`` (CRD
schemas), ``validations`` and ``cel`` (their CEL rules), ``crds``, ``strategies`` (per-kind
rules), ``listening`` (in-process observers), ``watching``, ``selectors``, ``indexes``,
``resources`` and ``kinds`` (what is served), ``discovery``, ``openapi``,
``tables``/``printing``/``jsonpath`` (kubectl's columns), ``queries`` (reading a request),
``protobuf`` (kubectl create's bodies), ``handling`` (answering it) and ``http`` (the
server).
"""
