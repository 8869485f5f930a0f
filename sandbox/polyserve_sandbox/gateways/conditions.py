"""Conditions as (type, status, reason, message), and stamped as ``metav1.Condition``.

Pure. The planners speak in tuples; ``stamped`` adds ``observedGeneration`` and a
``lastTransitionTime`` that moves only when the status does, so writing the same picture
twice changes nothing (the store then commits nothing). Conditions of types we do not own
are kept as they are, as the Gateway API asks of every controller.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
Condition = tuple[str, str, str, str]  # (type, status, reason, message)


def true(kind: str, reason: str, message: str) -> Condition:
    return (kind, "True", reason, message)


def false(kind: str, reason: str, message: str) -> Condition:
    return (kind, "False", reason, message)


def holds(conditions: list[Condition], kind: str) -> bool:
    return any(c[0] == kind and c[1] == "True" for c in conditions)


def stamped(wanted: list[Condition], previous: Any, generation: int, now: str) -> list[Obj]:
    before = {c.get("type"): c for c in previous or [] if isinstance(c, dict)}
    out: list[Obj] = []
    for kind, status, reason, message in wanted:
        old = before.pop(kind, None)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else now
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": since or now,
            }
        )
    return out + list(before.values())
