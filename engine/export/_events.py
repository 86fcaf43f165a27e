"""The event an export reports (defined with the others in engine.events)."""

from engine.events import Exported

__all__ = ["Exported"]
