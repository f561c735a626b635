"""Money as text: exact, in plain decimal notation, the same in tables, JSON and messages.

`Decimal` prints tiny amounts as `1E-7` and `0E-10`, Python's json prints floats as `7.8e-05`;
every amount genq shows goes through `money()` instead, so it reads `0.0000001`, `0`, `0.000078`.
"""

from __future__ import annotations

from decimal import Decimal


def money(value: Decimal | int | float | str) -> str:
    """`0.0000258`, `12.5`, `0`: every digit kept, no exponent, no trailing zeros."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount of money")
    if amount.is_zero():
        return "0"
    return format(amount.normalize(), "f")
