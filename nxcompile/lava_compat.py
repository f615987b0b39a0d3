"""Make lava-nc 0.10.0 and lava-dl 0.6.0 import on Python 3.11, and after other libraries.

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

A third fix holds on every Python: `lava.magma.runtime.message_infrastructure.
multiprocessing` calls `multiprocessing.set_start_method('fork')` when imported,
which raises if anything used multiprocessing before (tqdm's lock does, so
loading a model then building Lava processes failed). While that module
executes, asking for the start method already in use is a no-op; another one
still raises.

Call `install()` before importing Lava; `import nxcompile` does.
"""
from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import multiprocessing
import sys
import types
from contextlib import contextmanager

VAR_MODEL = "lava.magma.compiler.var_model"
MULTIPROCESSING = "lava.magma.runtime.message_infrastructure.multiprocessing"
OBJECT_DETECTION = "lava.lib.dl.slayer.object_detection"
_HASHABLE_DATACLASSES = frozenset({"ByteEncoder"})


def _needed() -> bool:
    return sys.version_info >= (3, 11)


@contextmanager
def _hashable_byte_encoder():
    """`@dataclass` builds ByteEncoder with unsafe_hash=True."""
    original = dataclasses.dataclass

    def dataclass(cls=None, /, **kwargs):
        def wrap(c):
            if c.__name__ in _HASHABLE_DATACLASSES:
                kwargs.setdefault("unsafe_hash", True)
            return original(c, **kwargs)

        return wrap if cls is None else wrap(cls)

    dataclasses.dataclass = dataclass
    try:
        yield
    finally:
        dataclasses.dataclass = original


@contextmanager
def _start_method_kept():
    """`multiprocessing.set_start_method(m)` is a no-op when m is already the start method."""
    original = multiprocessing.set_start_method

    def set_start_method(method, force=False):
        if force or multiprocessing.get_start_method(allow_none=True) != method:
            original(method, force=force)

    multiprocessing.set_start_method = set_start_method
    try:
        yield
    finally:
        multiprocessing.set_start_method = original


class _PatchedLoader(importlib.abc.Loader):
    """Runs a module's real loader inside a patch."""

    def __init__(self, wrapped: importlib.abc.Loader, patch):
        self._wrapped, self._patch = wrapped, patch

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        with self._patch():
            self._wrapped.exec_module(module)


class _LavaFinder(importlib.abc.MetaPathFinder):
    """Finds the Lava modules that need a patch while they execute, with their real loaders wrapped."""

    def __init__(self, patches: dict):
        self.patches = patches

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchedLoader(spec.loader, self.patches[fullname])
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
    """Apply the fixes once; safe to call any number of times. On Python 3.10 only the third."""
    if any(isinstance(f, _LavaFinder) for f in sys.meta_path):
        return
    patches = {MULTIPROCESSING: _start_method_kept} | ({VAR_MODEL: _hashable_byte_encoder} if _needed() else {})
    imported = [name for name in patches if name in sys.modules]
    if imported:
        raise RuntimeError(f"{imported[0]} was imported before nxcompile.lava_compat.install(); "
                           f"import nxcompile before lava")
    sys.meta_path.insert(0, _LavaFinder(patches))
    if _needed():
        _register_empty_object_detection()
