"""Compiler stages: convert, quantize, partition, export (one module each)."""
