"""Memory sizes as the GUI shows them: GiB (2**30 bytes), the unit the engine reports.

Every ``*_gb`` value the engine returns (advisor, telemetry, compare) is in GiB, so the GUI
writes "GiB" everywhere and formats through :func:`gib`; one home for the unit.
"""

from __future__ import annotations

UNIT = "GiB"
BYTES = 2**30


def gib(value: float | None, digits: int = 2) -> str:
    """``1.62 GiB`` (2 decimals by default, as the run's log); an em dash for no value."""
    if value is None:
        return "—"
    return f"{value:.{digits}f} {UNIT}"


def to_gib(value: object) -> float:
    """A size given in bytes or already in GiB (small numbers) as GiB; 0 when not a number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    return value / BYTES if value > 4096 else float(value)
