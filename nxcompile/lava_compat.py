"""Make lava-nc 0.10.0 and lava-dl 0.6.0 import on Python 3.11.

Both releases declare Python <3.11 but run on it after two in-process fixes,
which must be in place before the first `import lava...`:

1. `lava.magma.compiler.var_model` declares dataclass fields whose defaults
   are instances of the dataclass `ByteEncoder`. Python 3.11 rejects any
   default whose class is unhashable (dataclasses with eq=True are), so the
   module fails at import. While that module executes, `ByteEncoder` is built
   with `unsafe_hash=True`; nothing else changes.
2. `import lava.lib.dl.slayer` imports `slayer.object_detection`, which needs
   torchvision; there is no CPU torchvision for the CPU torch here. An empty
   module is pre-registered under that name (nxcompile uses no object
   detection).

Call `install()` before importing Lava; `import_lava()` and the backends do.
On Python 3.10 it does nothing.
"""
from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import sys
import types

VAR_MODEL = "lava.magma.compiler.var_model"
OBJECT_DETECTION = "lava.lib.dl.slayer.object_detection"
_HASHABLE_DATACLASSES = frozenset({"ByteEncoder"})


def _needed() -> bool:
    return sys.version_info >= (3, 11)


class _HashableByteEncoderLoader(importlib.abc.Loader):
    """Runs the real var_model loader with `dataclass` making ByteEncoder hashable."""

    def __init__(self, wrapped: importlib.abc.Loader):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        original = dataclasses.dataclass

        def dataclass(cls=None, /, **kwargs):
            def wrap(c):
                if c.__name__ in _HASHABLE_DATACLASSES:
                    kwargs.setdefault("unsafe_hash", True)
                return original(c, **kwargs)

            return wrap if cls is None else wrap(cls)

        dataclasses.dataclass = dataclass
        try:
            self._wrapped.exec_module(module)
        finally:
            dataclasses.dataclass = original


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != VAR_MODEL:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _HashableByteEncoderLoader(spec.loader)
        return spec


def _register_empty_object_detection() -> None:
    if OBJECT_DETECTION in sys.modules:
        return
    module = types.ModuleType(
        OBJECT_DETECTION,
        "Stand-in registered by nxcompile.lava_compat: the real module needs "
        "torchvision, which has no CPU build here.")
    sys.modules[OBJECT_DETECTION] = module


def install() -> None:
    """Apply both fixes once; safe to call any number of times."""
    if not _needed():
        return
    if not any(isinstance(f, _VarModelFinder) for f in sys.meta_path):
        if VAR_MODEL in sys.modules:
            raise RuntimeError(
                f"{VAR_MODEL} was imported before nxcompile.lava_compat.install(); "
                "import nxcompile before lava")
        sys.meta_path.insert(0, _VarModelFinder())
    _register_empty_object_detection()
