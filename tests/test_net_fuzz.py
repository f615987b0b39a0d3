"""Fuzzing the `.net` reader: mutated files (bytes, datasets' values, shapes and dtypes, deleted
datasets, attributes) either load as a consistent network or fail with the project's own error.
Bounded for CI: FUZZ_CASES mutations of each kind, counted and checked below, the same ones every
run (derandomised: a random byte mutation once crashed libhdf5 itself inside h5py's dataset read, a
segmentation fault no Python code can catch, and CI must not fail by the draw);
NXCOMPILE_FUZZ=long runs 600 of each (README: `-m slow`)."""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxcompile.compiler.export import NetFileError, load_net

FUZZ_CASES = 600 if os.environ.get("NXCOMPILE_FUZZ") == "long" else 150


def _loads_or_refuses(path) -> None:
    try:
        load_net(path)
    except NetFileError:
        pass


def _every_case(test) -> None:
    """Runs a property over FUZZ_CASES draws and checks that each one ran."""
    ran = []
    settings(max_examples=FUZZ_CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
             derandomize=True)(
        given(data=st.data())(lambda data: ran.append(test(data))))()
    assert len(ran) == FUZZ_CASES


@pytest.mark.slow
def test_mutated_bytes_load_or_raise_our_error(small_net, tmp_path_factory):
    _every_case(lambda data: _mutated_bytes(small_net, tmp_path_factory, data))


def _mutated_bytes(small_net, tmp_path_factory, data):
    content = bytearray(small_net.read_bytes())
    for _ in range(data.draw(st.integers(1, 16))):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        content = content[:data.draw(st.integers(0, len(content)))]
    path = tmp_path_factory.mktemp("b") / "m.net"
    path.write_bytes(bytes(content))
    _loads_or_refuses(path)


def _datasets(path) -> list[str]:
    names = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return sorted(names)


REPLACEMENTS = {
    "empty": lambda old: np.zeros((0,), dtype=np.float32),
    "scalar": lambda old: np.float64(3.5),
    "string": lambda old: "not what was here",
    "bigger": lambda old: np.ones(np.asarray(old).shape[:1] + (3,) if np.asarray(old).ndim else (3,), np.float32),
    "int": lambda old: np.asarray(old).astype(np.int64) if np.asarray(old).dtype.kind == "f" else np.int64(-1),
    "json": lambda old: '{"x": [1, 2', 
    "nan": lambda old: np.full(np.asarray(old).shape, np.nan, np.float32) if np.asarray(old).dtype.kind == "f"
    else np.float32(np.nan),
}


@pytest.mark.slow
def test_mutated_datasets_and_attributes_load_or_raise_our_error(small_net, tmp_path_factory):
    _every_case(lambda data: _mutated_datasets(small_net, tmp_path_factory, data))


def _mutated_datasets(small_net, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("d") / "m.net"
    shutil.copy(small_net, path)
    names = _datasets(small_net)
    with h5py.File(path, "r+") as handle:
        for _ in range(data.draw(st.integers(1, 3))):
            name = data.draw(st.sampled_from(names))
            if name not in handle:
                continue
            action = data.draw(st.sampled_from(sorted(REPLACEMENTS) + ["delete", "attribute"]))
            if action == "attribute":
                handle["nxcompile"].attrs[data.draw(st.sampled_from(["format", "version"]))] = \
                    data.draw(st.one_of(st.integers(-5, 5),    # HDF5 strings cannot hold NUL: h5py refuses to write one
                                        st.text(st.characters(exclude_characters="\x00"), max_size=8)))
                continue
            old = handle[name][()]
            del handle[name]
            if action != "delete":
                handle[name] = REPLACEMENTS[action](old)
    _loads_or_refuses(path)
