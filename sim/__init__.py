"""Simulation and accounting: the reference executor and the energy model."""
