"""Diffusion backbones: one adapter per family behind one small interface."""
