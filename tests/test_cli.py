"""The CLI as a thin shell: a few end-to-end runs per verb (in process, through `main`), the real
entry point in a fresh interpreter for the few things only it shows, and one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nxcompile.cli import main
from tests.conftest import REPO_ROOT


def nxcompile(*args: str) -> subprocess.CompletedProcess:
    """The installed command line in a fresh interpreter (what a user types)."""
    return subprocess.run([sys.executable, "-m", "nxcompile.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`nxcompile ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("nxcompile: error:")]
    assert len(error_lines) == 1, err
    for needle in needles:
        assert needle in error_lines[0]


# ---- the real entry point ----------------------------------------------------------------------------

def test_the_entry_point_routes_the_headline_and_fails_in_one_line():
    """`nxcompile MODEL` is the pipeline: a model that does not exist is one line with exit 2."""
    unknown = nxcompile("gpt2-huge", "--target", "loihi2-sim")
    assert_one_line_error(unknown.returncode, unknown.stderr, 2, "gpt2-huge")


def test_help_names_the_headline_and_debug_shows_the_traceback(capsys):
    from nxcompile.errors import UsageError

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for word in ("models", "perplexity", "generate", "convert", "eval", "partition", "energy", "--target loihi2-sim"):
        assert word in out
    with pytest.raises(UsageError, match="gpt2-huge"):
        main(["--debug", "gpt2-huge"])


# ---- models, perplexity, generate -------------------------------------------------------------------

def test_models_lists_the_zoo_and_what_is_on_this_machine(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    code, out, _ = cli(capsys, "models")
    assert code == 0
    for name in ("gpt2-tiny", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"):
        assert name in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "gpt2_tiny" in lines["gpt2-tiny"] and "not found" in lines["gpt2-small"]
    code, _, err = cli(capsys, "gpt2-small", "--target", "loihi2-sim")
    assert_one_line_error(code, err, 2, str(tmp_path), "--model-path")


def test_perplexity_and_its_bad_input(capsys, tmp_path):
    code, out, _ = cli(capsys, "perplexity", "gpt2-tiny", "--max-tokens", "600")
    assert code == 0 and "perplexity" in out
    code, out, _ = cli(capsys, "perplexity", "random:gpt2-tiny", "--max-tokens", "300")
    assert code == 0 and "random weights" in out.lower()
    code, _, err = cli(capsys, "perplexity", "gpt2-small", "--model-path", str(tmp_path))
    assert_one_line_error(code, err, 2, "not a GPT-2 checkpoint")


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_invalid_counts_are_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["perplexity", "gpt2-tiny", "--max-tokens", bad])
    assert exit_.value.code == 2 and "--max-tokens" in capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [(["--prompt", ""], "tokenizes to nothing"),
                                         (["--prompt", "To be", "--max-new-tokens", "500"],
                                          "exceeds the model's context")])
def test_bad_prompts_exit_2_with_one_line(args, needle, capsys):
    assert_one_line_error(*cli(capsys, "generate", "gpt2-tiny", *args)[::2], 2, needle)


# ---- convert, eval ------------------------------------------------------------------------------------

def test_convert_writes_a_graph_eval_scores_and_another_models_graph_is_refused(capsys, tmp_path):
    from nxcompile.compiler.graph import load_graph

    out = tmp_path / "tiny.safetensors"
    assert cli(capsys, "convert", "gpt2-tiny", "-T", "4", "-o", str(out))[0] == 0
    graph = load_graph(out)
    assert graph.meta["options"]["timesteps"] == 4 and graph.meta["model"] == "gpt2-tiny"
    code, text, _ = cli(capsys, "eval", "gpt2-tiny", "--graph", str(out), "-T", "4", "--max-tokens", "256")
    header = next(line for line in text.splitlines() if "ANN ppl" in line)
    row = text.splitlines()[text.splitlines().index(header) + 1].split()
    assert code == 0 and row[0] == "4" and float(row[1]) > 1 and float(row[2]) > 1
    assert "per block" in text and "h0.attn.ssa" in text
    other = tmp_path / "other.safetensors"
    assert cli(capsys, "convert", "random:gpt2-tiny", "-T", "2", "-o", str(other))[0] == 0
    assert_one_line_error(*cli(capsys, "eval", "gpt2-tiny", "--graph", str(other))[::2], 2, "was made from")


def test_eval_sweep_writes_a_png_and_rejects_bad_lists(capsys, tmp_path):
    plot = tmp_path / "sweep.png"
    code, out, _ = cli(capsys, "eval", "gpt2-tiny", "--raw", "--sweep-timesteps", "1,2", "--max-tokens", "128",
                       "--plot", str(plot))
    assert code == 0 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.png"]
    for bad in ("0,2", "a,b", ","):
        assert_one_line_error(*cli(capsys, "eval", "gpt2-tiny", "--sweep-timesteps", bad)[::2], 2,
                              "--sweep-timesteps")


def test_eval_runs_the_spikedecoder_variants_and_refuses_flags_a_method_ignores(capsys):
    code, out, _ = cli(capsys, "eval", "gpt2-tiny", "--method", "spikedecoder", "--embedding", "binary",
                       "--norm", "static", "-T", "2", "--max-tokens", "128")
    assert code == 0 and "embedding binary, norm static, residual spiking" in out
    assert_one_line_error(*cli(capsys, "eval", "gpt2-tiny", "--norm", "static")[::2], 2,
                          "--norm", "not an option of the neurtransformer method")
    assert_one_line_error(*cli(capsys, "eval", "gpt2-tiny", "--method", "graded", "--neuron", "lif")[::2], 2,
                          "--neuron", "graded")


@pytest.mark.parametrize("command", [["convert", "gpt2-tiny", "-T", "2", "-o"],
                                     ["eval", "gpt2-tiny", "-T", "2", "--max-tokens", "64", "--plot"]])
def test_unwritable_output_is_one_line_and_leaves_nothing(command, capsys, tmp_path):
    target = tmp_path / "missing-folder" / "out.file"
    assert_one_line_error(*cli(capsys, *command, str(target))[::2], 2, "cannot write")
    assert not (tmp_path / "missing-folder").exists()


# ---- targets, quantize, partition -----------------------------------------------------------------------

def test_targets_prints_every_target_with_sources(capsys):
    code, out, _ = cli(capsys, "targets")
    assert code == 0
    for name in ("loihi2-sim", "loihi2", "loihi2-kapoho-point", "loihi2-hala-point", "loihi1"):
        assert name in out
    assert "neurons_per_core" in out and "Davies et al." in out


def test_quantize_prints_error_per_layer_and_writes_the_graph(capsys, tmp_path):
    out = tmp_path / "q.safetensors"
    code, text, _ = cli(capsys, "quantize", "gpt2-tiny", "--error-tokens", "16", "-o", str(out))
    assert code == 0 and "h0.attn.q" in text and "mantissa bits" in text and "graded" in text
    assert out.stat().st_size > 1_000_000


def test_partition_reports_and_writes_plot_and_placement(capsys, tmp_path):
    plot, placement = tmp_path / "use.png", tmp_path / "placement.json"
    code, out, _ = cli(capsys, "partition", "gpt2-tiny", "--target", "loihi2", "--rate-tokens", "16",
                       "--plot", str(plot), "-o", str(placement))
    assert code == 0
    for words in ("cores used", "lower bound", "used / bound", "inter chip", "measured spike rates",
                  "time per stage", "validate"):
        assert words in out
    assert plot.stat().st_size > 1000 and placement.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["placement.json", "use.png"]


def test_partition_of_foreign_and_corrupt_net_files(capsys, shared_netx, tmp_path):
    pilotnet = str(shared_netx / "pilotnet_sdnn" / "network.net")
    code, out, _ = cli(capsys, "partition", pilotnet, "--target", "loihi2")
    assert code == 0 and "cores used" in out and "layer4:conv: 2," in out
    assert_one_line_error(*cli(capsys, "partition", pilotnet, "--target", "loihi1")[::2], 1,
                          "binary spikes only", "loihi2")
    for content in (b"", b"not an hdf5 file at all" * 50):
        path = tmp_path / "broken.net"
        path.write_bytes(content)
        assert_one_line_error(*cli(capsys, "partition", str(path))[::2], 2, "is not a readable lava-dl .net network")


def test_an_unknown_target_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["partition", "gpt2-tiny", "--target", "loihi3"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


# ---- export, inspect -------------------------------------------------------------------------------------

def test_export_writes_a_net_file_that_inspect_describes(capsys, tmp_path, shared_netx):
    out = tmp_path / "tiny.net"
    assert cli(capsys, "export", "gpt2-tiny", "--target", "loihi2", "-T", "2", "-o", str(out))[0] == 0
    code, text, _ = cli(capsys, "inspect", str(out))
    assert code == 0
    for needle in ("model gpt2-tiny", "h0.attn.ssa", "ssa", "dense", "placement:", "cores on 1 chip"):
        assert needle in text
    code, text, _ = cli(capsys, "inspect", str(shared_netx / "pilotnet_sdnn" / "network.net"))
    assert code == 0 and "not written by nxcompile" in text
    (tmp_path / "x.net").write_text("hello")
    assert_one_line_error(*cli(capsys, "inspect", str(tmp_path / "x.net"))[::2], 2, "not an HDF5 .net file")


def test_headline_on_hardware_without_lava_loihi_is_one_line(capsys, tmp_path):
    assert_one_line_error(*cli(capsys, "gpt2-tiny", "--target", "loihi2", "-o", str(tmp_path / "x.net"))[::2], 2,
                          "lava-loihi", "loihi2-sim")
    assert not (tmp_path / "x.net").exists()


# ---- finetune --------------------------------------------------------------------------------------------

def test_finetune_writes_a_resumable_checkpoint_the_compiler_reads(capsys, tmp_path):
    out = tmp_path / "tuned.safetensors"
    common = ("finetune", "gpt2-tiny", "-T", "2", "--train-context", "32", "--eval-tokens", "0", "-o", str(out))
    code, _, err = cli(capsys, *common, "--steps", "1")
    assert code == 0 and "finetune" in err and out.exists()
    code, text, _ = cli(capsys, *common, "--steps", "2", "--resume")
    assert code == 0 and "(2 steps" in text
    code, _, err = cli(capsys, "quantize", "gpt2-tiny", "--graph", str(out), "-T", "2", "--error-tokens", "16")
    assert code == 0 and "(fine-tuned: 2 steps, scope ssa, T = 2)" in err


@pytest.mark.parametrize("args, needle", [
    (("--device", "tpu"), "unknown --device"),
    (("--resume",), "not an nxcompile fine-tuning state"),
    (("--train-text", "/nonexistent/text.txt"), "cannot read --train-text"),
])
def test_finetune_bad_input_is_one_line(args, needle, capsys, tmp_path):
    out = tmp_path / "tuned.safetensors"
    (tmp_path / "tuned.safetensors.train-state.pt").write_bytes(b"garbage")
    assert_one_line_error(*cli(capsys, "finetune", "gpt2-tiny", "--steps", "1", "-o", str(out), *args)[::2], 2,
                          needle)
    assert not out.exists()


# ---- the shipped fine-tuned graph, the default where it applies ------------------------------------------

def test_the_shipped_graph_is_the_default_raw_converts_and_other_flags_convert_afresh(tmp_path, monkeypatch, caplog):
    """compiler.convert.resolve_graph on gpt2-tiny's conversion saved as if fine-tuned and shipped."""
    import logging

    from nxcompile.compiler.convert import ConversionOptions, convert, resolve_graph
    from nxcompile.compiler.graph import save_graph
    from nxcompile.models import zoo
    from nxcompile.models.corpus import calibration_windows

    loaded = zoo.load_model("gpt2-tiny")
    graph = convert(loaded.model, ConversionOptions(timesteps=2), calibration_windows(loaded.tokenizer, 128),
                    "gpt2-tiny")
    graph.meta["finetune"] = {"options": {"scope": "all", "timesteps": 2}, "steps": 7, "final_loss": 1.0}
    save_graph(graph, tmp_path / "shipped.safetensors")
    monkeypatch.setitem(zoo.SHIPPED_GRAPHS, ("gpt2-tiny", "neurtransformer"), tmp_path / "shipped.safetensors")
    resolve = lambda shipped=True, **options: resolve_graph(loaded, ConversionOptions(**options), 128,  # noqa: E731
                                                             shipped=shipped)
    with caplog.at_level(logging.INFO, logger="nxcompile"):
        assert resolve(timesteps=2).meta["origin"].startswith("shipped fine-tuned graph shipped.safetensors")
        assert "(fine-tuned: 7 steps" in caplog.text
        assert resolve(False, timesteps=2).meta["origin"] == "converted, not fine-tuned"
        assert resolve(neuron="lif", timesteps=2).meta["origin"] == "converted, not fine-tuned"
        assert "other conversion flags (neuron 'if' -> 'lif')" in caplog.text
        assert resolve(timesteps=4).meta["options"]["timesteps"] == 4 and "running it at T = 4" in caplog.text


def test_the_shipped_graph_matches_the_default_conversion_flags():
    """What makes it the default: made with ConversionOptions' defaults (T apart), and fine-tuned."""
    import json
    from dataclasses import asdict

    from nxcompile.compiler.convert import ConversionOptions
    from nxcompile.compiler.graph import load_graph
    from nxcompile.models.zoo import shipped_graph

    path = shipped_graph("gpt2-tiny", "neurtransformer")
    assert path is not None, "models/gpt2_tiny lacks its fine-tuned graph; make finetune-tiny writes it"
    graph = load_graph(path)
    defaults = json.loads(json.dumps(asdict(ConversionOptions())))
    assert {k: v for k, v in graph.meta["options"].items() if k != "timesteps"} == \
        {k: v for k, v in defaults.items() if k != "timesteps"}
    assert graph.meta["finetune"]["steps"] > 0
    assert path.with_suffix(".json").is_file()
