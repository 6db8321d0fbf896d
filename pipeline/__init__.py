"""Revelio pipeline: interpret diffusion models' internals (see DESIGN.md)."""

__version__ = "0.1.0"
