"""Backends that run a compiled `.net` model: Lava's CPU simulator, Loihi 2."""
