"""Shared test fixtures: Intel's published netx networks live beside the repo in ../shared/netx."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_NETX = REPO_ROOT.parent / "shared" / "netx"


@pytest.fixture(scope="session")
def shared_netx() -> Path:
    """The folder of Intel's networks; its absence is a broken checkout, not a skip."""
    assert SHARED_NETX.is_dir(), f"expected Intel's netx networks at {SHARED_NETX}"
    return SHARED_NETX


@pytest.fixture(scope="session")
def tiny_graph():
    """The shipped gpt2-tiny converted with default options (calibrated on a few training tokens)."""
    import torch

    from nxcompile.compiler.convert import ConversionOptions, convert
    from nxcompile.models.corpus import load_corpus
    from nxcompile.models.zoo import load_model

    loaded = load_model("gpt2-tiny")
    ids = torch.tensor(loaded.tokenizer(load_corpus().train[:4000])["input_ids"][:256]).reshape(2, 128)
    return convert(loaded.model, ConversionOptions(), ids, model_name="gpt2-tiny")


@pytest.fixture(scope="session")
def small_net(tmp_path_factory) -> Path:
    """A real (tiny, random) GPT-2 converted, quantised and exported: a few hundred KB, for the
    tests that damage files."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from nxcompile.compiler.convert import ConversionOptions, convert
    from nxcompile.compiler.export import export_net, load_net
    from nxcompile.compiler.layers import network_from_graph
    from nxcompile.compiler.partition import place
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import TARGETS

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                       bos_token_id=0, eos_token_id=0)).eval()
    graph = quantize(convert(model, ConversionOptions(timesteps=2), torch.randint(0, 64, (2, 16))),
                     TARGETS["loihi2-sim"])
    path = tmp_path_factory.mktemp("small") / "small.net"
    export_net(graph, path, place(network_from_graph(graph), TARGETS["loihi2-sim"]))
    load_net(path)                                         # the unmutated file is valid
    return path
