"""Tools: plain Python functions the model may call to do something it cannot read in a document.

A tool is an ordinary, typed function with a docstring: its name, type hints and docstring
become the schema the model sees, so keep them precise. Tools here are read-only and have no
side effects.

To let the model call it, list it in keel.toml: ``[tools] enabled = ["tools:convert_length"]``.
``keel tools list`` shows what the model may call.
"""

from __future__ import annotations

from keel.tools import tool

_METRES_PER_UNIT: dict[str, float] = {
    "mm": 0.001,
    "cm": 0.01,
    "m": 1.0,
    "km": 1000.0,
    "in": 0.0254,
    "ft": 0.3048,
    "yd": 0.9144,
    "mi": 1609.344,
}


@tool(examples=("convert 5 km to mi", "how many ft is 2 m"))
def convert_length(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a length from one unit to another.

    Args:
        value: The length to convert, in ``from_unit``.
        from_unit: The unit of ``value``: one of mm, cm, m, km, in, ft, yd, mi.
        to_unit: The unit to convert to: one of mm, cm, m, km, in, ft, yd, mi.

    Returns:
        The length in ``to_unit``, rounded to 6 decimal places.

    Raises:
        ValueError: A unit is not one of the supported units.
    """
    units = ", ".join(_METRES_PER_UNIT)
    for unit in (from_unit, to_unit):
        if unit not in _METRES_PER_UNIT:
            raise ValueError(f"unknown unit {unit!r}; use one of: {units}")
    metres = value * _METRES_PER_UNIT[from_unit]
    return round(metres / _METRES_PER_UNIT[to_unit], 6)
