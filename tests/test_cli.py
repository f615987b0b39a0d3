"""The CLI through its real entry point: help, the zoo listing, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def nxcompile(*args: str, hf_home=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    return subprocess.run([sys.executable, "-m", "nxcompile.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("nxcompile: error:")]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle in error_lines[0]


def test_help_names_the_headline_and_commands():
    result = nxcompile("--help")
    assert result.returncode == 0
    for word in ("models", "perplexity", "generate", "convert", "eval", "--target loihi2-sim"):
        assert word in result.stdout
    assert "--timesteps" in nxcompile("pipeline", "--help").stdout


def test_models_lists_the_zoo_and_local_availability(tmp_path):
    result = nxcompile("models", hf_home=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("gpt2-tiny", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"):
        assert name in result.stdout
    tiny_line = next(line for line in result.stdout.splitlines() if line.startswith("gpt2-tiny"))
    assert "gpt2_tiny" in tiny_line
    small_line = next(line for line in result.stdout.splitlines() if line.startswith("gpt2-small"))
    assert "not found" in small_line


def test_unknown_model_exits_2_with_one_line():
    assert_one_line_error(nxcompile("gpt2-huge", "--target", "loihi2-sim"), 2, "gpt2-huge")


def test_missing_weights_exit_2_naming_the_cache(tmp_path):
    assert_one_line_error(nxcompile("gpt2-small", "--target", "loihi2-sim", hf_home=tmp_path),
                          2, str(tmp_path), "--model-path")


def test_unknown_target_exits_2():
    assert_one_line_error(nxcompile("gpt2-tiny", "--target", "loihi9"), 2, "loihi9")


def test_not_a_checkpoint_folder_exits_2(tmp_path):
    assert_one_line_error(nxcompile("perplexity", "gpt2-small", "--model-path", str(tmp_path)),
                          2, "not a GPT-2 checkpoint")


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_invalid_counts_are_refused_by_the_parser(bad):
    result = nxcompile("perplexity", "gpt2-tiny", "--max-tokens", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = nxcompile("--debug", "gpt2-huge")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_perplexity_of_the_shipped_model_runs():
    result = nxcompile("perplexity", "gpt2-tiny", "--max-tokens", "600")
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout


def test_random_model_output_says_random_weights():
    result = nxcompile("perplexity", "random:gpt2-tiny", "--max-tokens", "300")
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stdout.lower()


def test_eval_prints_the_comparison_table():
    result = nxcompile("eval", "gpt2-tiny", "--timesteps", "4", "--max-tokens", "256")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "ANN ppl" in line)
    row = result.stdout.splitlines()[result.stdout.splitlines().index(header) + 1].split()
    assert row[0] == "4" and float(row[1]) > 1 and float(row[2]) > 1
    assert "per block" in result.stdout and "h0.attn.ssa" in result.stdout


def test_eval_sweep_writes_a_png(tmp_path):
    plot = tmp_path / "sweep.png"
    result = nxcompile("eval", "gpt2-tiny", "--sweep-timesteps", "1,2", "--max-tokens", "128",
                       "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("bad", ["0,2", "a,b", ","])
def test_eval_sweep_rejects_bad_lists(bad):
    assert_one_line_error(nxcompile("eval", "gpt2-tiny", "--sweep-timesteps", bad), 2,
                          "--sweep-timesteps")


def test_convert_writes_a_graph_that_loads(tmp_path):
    from nxcompile.compiler.graph import load_graph

    out = tmp_path / "tiny.safetensors"
    result = nxcompile("convert", "gpt2-tiny", "-T", "4", "-o", str(out))
    assert result.returncode == 0, result.stderr
    graph = load_graph(out)
    assert graph.meta["options"]["timesteps"] == 4 and graph.meta["model"] == "gpt2-tiny"


@pytest.mark.slow
def test_headline_runs_the_whole_pipeline_into_lava(tmp_path):
    out = tmp_path / "tiny.net"
    result = nxcompile("gpt2-tiny", "--target", "loihi2-sim", "--max-tokens", "256", "--max-new-tokens", "1",
                       "-o", str(out))
    assert result.returncode == 0, result.stderr
    for word in ("gpt2-tiny", "neurtransformer", "loihi2-sim", "cores on 1 chip", "perplexity", "cosine",
                 "reference twin: identical spikes at every layer and logits", "steps/s", "per token on chip",
                 str(out)):
        assert word in result.stdout
    from nxcompile.compiler.export import load_net

    graph, placement = load_net(out)
    assert graph.meta["quantization"]["target"] == "loihi2-sim" and placement["cores_used"] > 0


def test_headline_on_hardware_without_lava_loihi_is_one_line(tmp_path):
    result = nxcompile("gpt2-tiny", "--target", "loihi2", "-o", str(tmp_path / "x.net"))
    assert_one_line_error(result, 2, "lava-loihi", "loihi2-sim")
    assert not (tmp_path / "x.net").exists()


def test_eval_runs_the_spikedecoder_variants():
    result = nxcompile("eval", "gpt2-tiny", "--method", "spikedecoder", "--embedding", "binary",
                       "--norm", "static", "-T", "2", "--max-tokens", "128")
    assert result.returncode == 0, result.stderr
    assert "embedding binary, norm static, residual spiking" in result.stdout


@pytest.mark.parametrize("command", [["convert", "gpt2-tiny", "-T", "2", "-o"],
                                     ["eval", "gpt2-tiny", "-T", "2", "--max-tokens", "64", "--plot"]])
def test_unwritable_output_is_one_line_and_leaves_nothing(command, tmp_path):
    target = tmp_path / "missing-folder" / "out.file"
    assert_one_line_error(nxcompile(*command, str(target)), 2, "cannot write")
    assert not (tmp_path / "missing-folder").exists()


@pytest.mark.parametrize("args,needle", [(["--prompt", ""], "tokenizes to nothing"),
                                         (["--prompt", "To be", "--max-new-tokens", "500"],
                                          "exceeds the model's context")])
def test_bad_prompts_exit_2_with_one_line(args, needle):
    assert_one_line_error(nxcompile("generate", "gpt2-tiny", *args), 2, needle)


def test_targets_prints_every_target_with_sources():
    result = nxcompile("targets")
    assert result.returncode == 0, result.stderr
    for name in ("loihi2-sim", "loihi2", "loihi2-kapoho-point", "loihi2-hala-point", "loihi1"):
        assert name in result.stdout
    assert "neurons_per_core" in result.stdout and "Davies et al." in result.stdout


def test_partition_reports_and_writes_plot_and_placement(tmp_path):
    plot, placement = tmp_path / "use.png", tmp_path / "placement.json"
    result = nxcompile("partition", "gpt2-tiny", "--target", "loihi2", "--rate-tokens", "16",
                       "--plot", str(plot), "-o", str(placement))
    assert result.returncode == 0, result.stderr
    for words in ("cores used", "lower bound", "used / bound", "inter chip", "measured spike rates",
                  "time per stage", "validate"):
        assert words in result.stdout
    assert plot.stat().st_size > 1000 and placement.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["placement.json", "use.png"]


def test_partition_of_a_foreign_net_file(shared_netx):
    result = nxcompile("partition", str(shared_netx / "pilotnet_sdnn" / "network.net"), "--target", "loihi2")
    assert result.returncode == 0, result.stderr
    assert "cores used" in result.stdout and "layer4:conv: 2," in result.stdout


def test_graded_network_on_binary_loihi1_is_one_line_error(shared_netx):
    result = nxcompile("partition", str(shared_netx / "pilotnet_sdnn" / "network.net"), "--target", "loihi1")
    assert_one_line_error(result, 1, "binary spikes only", "loihi2")


@pytest.mark.slow
def test_model_too_big_for_the_target_names_one_that_fits():
    result = nxcompile("partition", "random:gpt2-small", "--target", "loihi2-kapoho-point", "--rate-tokens", "0")
    assert_one_line_error(result, 1, "cores short", "loihi2-kapoho-point has 1,024 cores",
                          "loihi2-hala-point would fit")


def test_unknown_target_is_a_usage_error():
    result = nxcompile("partition", "gpt2-tiny", "--target", "loihi3")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_quantize_prints_error_per_layer_and_writes_the_graph(tmp_path):
    out = tmp_path / "q.safetensors"
    result = nxcompile("quantize", "gpt2-tiny", "--error-tokens", "16", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "h0.attn.q" in result.stdout and "mantissa bits" in result.stdout and "graded" in result.stdout
    assert out.stat().st_size > 1_000_000


@pytest.mark.parametrize("content", [b"", b"not an hdf5 file at all" * 50])
def test_partition_of_a_corrupt_net_file_is_one_line(tmp_path, content):
    path = tmp_path / "broken.net"
    path.write_bytes(content)
    assert_one_line_error(nxcompile("partition", str(path)), 2, "is not a readable lava-dl .net network")


def test_finetune_writes_a_resumable_checkpoint_the_compiler_reads(tmp_path):
    out = tmp_path / "tuned.safetensors"
    common = ("finetune", "gpt2-tiny", "--train-context", "32", "--eval-tokens", "0", "-o", str(out))
    first = nxcompile(*common, "--steps", "1")
    assert first.returncode == 0, first.stderr
    assert "finetune" in first.stderr and out.exists()
    resumed = nxcompile(*common, "--steps", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "(2 steps" in resumed.stdout
    quantised = nxcompile("quantize", "gpt2-tiny", "--graph", str(out), "--error-tokens", "16")
    assert quantised.returncode == 0, quantised.stderr
    assert "(fine-tuned: 2 steps, scope ssa" in quantised.stderr


@pytest.mark.parametrize("args, needle", [
    (("--device", "tpu"), "unknown --device"),
    (("--resume",), "not an nxcompile fine-tuning state"),
    (("--train-text", "/nonexistent/text.txt"), "cannot read --train-text"),
])
def test_finetune_bad_input_is_one_line(args, needle, tmp_path):
    out = tmp_path / "tuned.safetensors"
    (tmp_path / "tuned.safetensors.train-state.pt").write_bytes(b"garbage")
    assert_one_line_error(nxcompile("finetune", "gpt2-tiny", "--steps", "1", "-o", str(out), *args), 2, needle)
    assert not out.exists()


def test_a_graph_from_another_model_is_refused(tmp_path):
    out = tmp_path / "g.safetensors"
    assert nxcompile("convert", "random:gpt2-tiny", "-o", str(out)).returncode == 0
    assert_one_line_error(nxcompile("eval", "gpt2-tiny", "--graph", str(out)), 2, "was made from")


def test_export_writes_a_net_file_that_inspect_describes(tmp_path, shared_netx):
    out = tmp_path / "tiny.net"
    result = nxcompile("export", "gpt2-tiny", "--target", "loihi2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    described = nxcompile("inspect", str(out))
    assert described.returncode == 0, described.stderr
    for needle in ("model gpt2-tiny", "h0.attn.ssa", "ssa", "dense", "placement:", "cores on 1 chip"):
        assert needle in described.stdout
    foreign = nxcompile("inspect", str(shared_netx / "pilotnet_sdnn" / "network.net"))
    assert foreign.returncode == 0 and "not written by nxcompile" in foreign.stdout


def test_inspect_of_a_file_that_is_not_hdf5_is_one_line(tmp_path):
    path = tmp_path / "x.net"
    path.write_text("hello")
    assert_one_line_error(nxcompile("inspect", str(path)), 2, "not an HDF5 .net file")


@pytest.fixture
def shipped_graph(tmp_path, monkeypatch):
    """gpt2-tiny's conversion saved as if fine-tuned and shipped, in place of the real shipped file."""
    import json
    from dataclasses import asdict

    from nxcompile.compiler.convert import ConversionOptions, convert
    from nxcompile.compiler.graph import save_graph
    from nxcompile.models import zoo
    from nxcompile.models.corpus import calibration_windows

    loaded = zoo.load_model("gpt2-tiny")
    graph = convert(loaded.model, ConversionOptions(), calibration_windows(loaded.tokenizer, 128), "gpt2-tiny")
    graph.meta["finetune"] = {"options": {"scope": "all", "timesteps": 8}, "steps": 7, "final_loss": 1.0}
    path = tmp_path / "shipped.safetensors"
    save_graph(graph, path)
    monkeypatch.setitem(zoo.SHIPPED_GRAPHS, ("gpt2-tiny", "neurtransformer"), path)
    assert json.loads(json.dumps(asdict(ConversionOptions())))["ssa_norm"] == graph.meta["options"]["ssa_norm"]
    return path


def test_the_shipped_fine_tuned_graph_is_the_default_and_raw_converts(shipped_graph, tmp_path, capsys):
    from nxcompile.cli import main
    from nxcompile.compiler.export import load_net

    assert main(["export", "gpt2-tiny", "-o", str(tmp_path / "a.net")]) == 0
    assert "shipped.safetensors shipped with gpt2-tiny (fine-tuned: 7 steps" in capsys.readouterr().err
    assert load_net(tmp_path / "a.net")[0].meta["origin"].startswith("shipped fine-tuned graph")
    assert main(["export", "gpt2-tiny", "--raw", "-o", str(tmp_path / "b.net")]) == 0
    assert "converting gpt2-tiny" in capsys.readouterr().err
    assert load_net(tmp_path / "b.net")[0].meta["origin"] == "converted, not fine-tuned"
    assert main(["export", "gpt2-tiny", "--neuron", "lif", "-o", str(tmp_path / "c.net")]) == 0
    assert "made with other conversion flags (neuron 'if' -> 'lif'); converting without fine-tuning" in \
        capsys.readouterr().err
    assert main(["export", "gpt2-tiny", "-T", "4", "-o", str(tmp_path / "d.net")]) == 0
    assert "running it at T = 4" in capsys.readouterr().err
    assert load_net(tmp_path / "d.net")[0].meta["options"]["timesteps"] == 4


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
