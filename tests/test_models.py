"""The model zoo, the shipped gpt2-tiny and its corpus, checked against published facts."""
from __future__ import annotations


import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nxcompile.errors import UsageError
from nxcompile.models import zoo
from nxcompile.models.corpus import HELD_OUT_PLAYS, load_corpus
from nxcompile.models.perplexity import perplexity

# Parameter counts of the published checkpoints (tied LM head), as reported by
# transformers' num_parameters() on the Hugging Face models.
PUBLISHED_PARAMETERS = {
    "distilgpt2": 81_912_576,
    "gpt2-small": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_zoo_architectures_match_the_published_models(name):
    assert zoo.parameter_count(zoo.ZOO[name].config()) == PUBLISHED_PARAMETERS[name]


def test_random_model_has_the_exact_config_and_says_so():
    loaded = zoo.load_model("random:distilgpt2")
    assert loaded.random_weights and "RANDOM WEIGHTS" in loaded.source
    assert loaded.model.num_parameters() == PUBLISHED_PARAMETERS["distilgpt2"]
    assert loaded.config.n_layer == 6 and loaded.config.n_embd == 768


def test_random_weights_are_seeded():
    a = zoo.load_model("random:gpt2-tiny").model.transformer.h[0].attn.c_attn.weight
    b = zoo.load_model("random:gpt2-tiny").model.transformer.h[0].attn.c_attn.weight
    assert torch.equal(a, b)


def test_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model 'gpt5'"):
        zoo.load_model("gpt5")
    with pytest.raises(UsageError, match="unknown model"):
        zoo.load_model("random:nope")


def test_shipped_tiny_model_is_a_real_small_gpt2():
    loaded = zoo.load_model("gpt2-tiny")
    assert isinstance(loaded.model, GPT2LMHeadModel) and not loaded.random_weights
    assert 1e6 <= loaded.model.num_parameters() <= 10e6
    assert (zoo.SHIPPED_TINY_DIR / "model.safetensors").stat().st_size < 30e6


def test_shipped_tiny_model_predicts_held_out_text_far_better_than_chance():
    loaded = zoo.load_model("gpt2-tiny")
    ids = torch.tensor(loaded.tokenizer(load_corpus().held_out)["input_ids"][:2048])
    ppl = perplexity(loaded.model, ids, loaded.config.n_positions)
    assert ppl < loaded.config.vocab_size / 20


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1,
                                       n_head=2, bos_token_id=0, eos_token_id=0))
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: every logit is zero
    ids = torch.randint(0, 50, (100,), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, ids, context=16) == pytest.approx(50, rel=1e-5)


def test_held_out_plays_never_reach_training():
    corpus = load_corpus()
    assert not set(HELD_OUT_PLAYS) & set(corpus.train_files)
    assert "To be, or not to be" in corpus.held_out
    assert "To be, or not to be" not in corpus.train
    assert len(corpus.held_out) > 300_000 and len(corpus.train) > 10 * len(corpus.held_out)


def _save_checkpoint(model: GPT2LMHeadModel, folder):
    model.save_pretrained(folder)
    zoo.shipped_tokenizer().save_pretrained(folder)


def test_model_path_loads_a_checkpoint_folder(tmp_path):
    torch.manual_seed(1)
    _save_checkpoint(GPT2LMHeadModel(zoo.ZOO["distilgpt2"].config()), tmp_path)
    loaded = zoo.load_model("distilgpt2", tmp_path)
    assert loaded.source == str(tmp_path) and not loaded.random_weights


def test_model_path_with_the_wrong_size_is_refused(tmp_path):
    _save_checkpoint(zoo.load_model("gpt2-tiny").model, tmp_path)
    with pytest.raises(UsageError, match="but gpt2-small has"):
        zoo.load_model("gpt2-small", tmp_path)


def test_folder_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(UsageError, match="is not a GPT-2 checkpoint"):
        zoo.load_model("gpt2-small", tmp_path)


def test_hf_cache_snapshot_is_found_offline(tmp_path, monkeypatch):
    """Lay out a Hugging Face cache the way huggingface_hub writes one."""
    snapshot = tmp_path / "models--distilbert--distilgpt2" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--distilbert--distilgpt2" / "refs").mkdir()
    (tmp_path / "models--distilbert--distilgpt2" / "refs" / "main").write_text("abc123")
    torch.manual_seed(2)
    _save_checkpoint(GPT2LMHeadModel(zoo.ZOO["distilgpt2"].config()), snapshot)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert zoo.find_in_hf_cache(zoo.ZOO["distilgpt2"]) == snapshot
    assert zoo.find_in_hf_cache(zoo.ZOO["gpt2-xl"]) is None


def test_missing_weights_name_where_it_looked(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(zoo, "find_in_hf_cache", lambda entry: None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UsageError) as err:
        zoo.load_model("gpt2-medium")
    message = str(err.value)
    assert str(tmp_path) in message and "--model-path" in message
    assert "openai-community/gpt2-medium" in message and "\n" not in message
    assert err.value.exit_code == 2
