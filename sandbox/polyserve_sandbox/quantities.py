"""Kubernetes resource quantities (``500m``, ``4Gi``, ``2``, ``1e3``) as numbers.

CPU is counted in millicores and everything else in units (bytes for memory), as the
scheduler compares them; ``format_*`` writes them back the way kubectl shows them.
"""

from __future__ import annotations

import re
from decimal import Decimal

_PATTERN = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse(value: int | float | str) -> Decimal:
    """The value of a quantity in base units (cores, bytes, devices)."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _PATTERN.match(str(value).strip())
    if not match:
        raise QuantityError(f"{value!r} is not a quantity (e.g. 500m, 2, 4Gi)")
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix:
        return number * Decimal(10) ** int(suffix[1:])
    return number


def amount(resource: str, value: int | float | str) -> int:
    """A quantity as the scheduler counts it: millicores for ``cpu``, else whole units."""
    parsed = parse(value)
    if resource == "cpu":
        return int((parsed * 1000).to_integral_value(rounding="ROUND_CEILING"))
    return int(parsed.to_integral_value(rounding="ROUND_CEILING"))


def format_amount(resource: str, value: int) -> str:
    """How kubectl would show an amount of ``resource``."""
    if resource == "cpu":
        return f"{value // 1000}" if value % 1000 == 0 else f"{value}m"
    if resource in ("memory", "ephemeral-storage"):
        for suffix in ("Gi", "Mi", "Ki"):
            if value % _BINARY[suffix] == 0 and value >= _BINARY[suffix]:
                return f"{value // _BINARY[suffix]}{suffix}"
    return str(value)
