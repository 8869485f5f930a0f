"""The validating webhook's server and availability policy, from ``settings.Webhook``.

What keeps admission available (the webhook is registered with the API server, so an
operator that cannot answer would otherwise block every write of our resources):

- ``failurePolicy`` is ``Ignore`` unless the settings say ``Fail``: the webhook's checks are
  about validity (a backend the pool cannot run, an ensemble's wiring, a name two kinds
  share), not security; the CRDs' CEL rules still hold at the API server, and the reconciler
  runs the same checks and reports ``InvalidSpec`` in status. An operator restart or a node
  drain then never blocks a write.
- One replica (Recreate), because kopf elects no leader: its peering pauses every operator
  when two have the same priority, and the lower one when priorities differ, so a standby
  needs the peering CRD and distinct priorities (random ones can collide), and what it would
  add, admission while the active one restarts, Ignore already gives.
- The certificate files are re-read every ``reload_seconds``: a cert-manager renewal restarts
  kopf's server with the new certificate and re-patches the configuration's ``caBundle``.
- The pod is Ready only while the webhook answers with a certificate its CA verifies
  (``readiness``), so the webhook Service never routes to an operator that cannot answer.
"""

from __future__ import annotations

import kopf

from polyserve_operator import settings


def server(hook: settings.Webhook) -> kopf.WebhookServer:
    """kopf's webhook server for these settings (TLS from the files, reloaded on change)."""
    return kopf.WebhookServer(
        addr=hook.addr,
        port=hook.port,
        host=hook.host,
        certfile=str(hook.certfile) if hook.certfile else None,
        pkeyfile=str(hook.pkeyfile) if hook.pkeyfile else None,
        cafile=str(hook.cafile) if hook.cafile else None,
        insecure=hook.insecure,
        file_check_interval=hook.reload_seconds,
    )


def ignore_failures(hook: settings.Webhook) -> bool:
    """kopf's per-handler option that renders ``failurePolicy: Ignore``."""
    return hook.failure_policy == "Ignore"
