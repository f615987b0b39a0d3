"""The model zoo: GPT-2 sizes by name, loaded offline, or built with random weights.

Real weights come from `--model-path DIR` or an existing Hugging Face cache,
never from the network (`local_files_only=True`). `random:NAME` builds a model
with NAME's exact architecture and seeded random weights, for compile and
performance work at full size where the weights are absent; it is marked so
that every output made from it can say its quality figures mean nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from nxcompile.errors import UsageError

SHIPPED_TINY_DIR = Path(__file__).resolve().parent / "gpt2_tiny"
# Fine-tuned spiking graphs shipped with a model (`make finetune-tiny` makes this one): the
# compiler uses them by default for that model and method.
SHIPPED_GRAPHS = {("gpt2-tiny", "neurtransformer"): SHIPPED_TINY_DIR / "neurtransformer-finetuned.safetensors"}
RANDOM_PREFIX = "random:"
RANDOM_WEIGHTS_SEED = 0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: quality figures from this model mean nothing"


@dataclass(frozen=True)
class ZooEntry:
    """A named GPT-2 and where its weights may be found.

    `architecture` holds the GPT2Config fields of the published checkpoint
    (huggingface.co/openai-community/<id>/blob/main/config.json), so
    `random:` models match the real ones exactly without any download.
    """
    name: str
    hub_ids: tuple[str, ...]
    architecture: dict = field(default_factory=dict)
    description: str = ""

    def config(self) -> GPT2Config:
        if not self.hub_ids:
            if not _is_checkpoint_dir(SHIPPED_TINY_DIR):
                raise UsageError(f"the shipped gpt2-tiny is missing from {SHIPPED_TINY_DIR}; "
                                 f"restore it from git or retrain it with `make train-tiny`")
            return GPT2Config.from_pretrained(SHIPPED_TINY_DIR)
        return GPT2Config(vocab_size=50257, n_positions=1024, **self.architecture)


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("gpt2-tiny", (), description="shipped with nxcompile, trained on Shakespeare"),
    ZooEntry("distilgpt2", ("distilbert/distilgpt2", "distilgpt2"),
             dict(n_layer=6, n_embd=768, n_head=12), "distilled GPT-2"),
    ZooEntry("gpt2-small", ("openai-community/gpt2", "gpt2"),
             dict(n_layer=12, n_embd=768, n_head=12), "HF gpt2"),
    ZooEntry("gpt2-medium", ("openai-community/gpt2-medium", "gpt2-medium"),
             dict(n_layer=24, n_embd=1024, n_head=16)),
    ZooEntry("gpt2-large", ("openai-community/gpt2-large", "gpt2-large"),
             dict(n_layer=36, n_embd=1280, n_head=20)),
    ZooEntry("gpt2-xl", ("openai-community/gpt2-xl", "gpt2-xl"),
             dict(n_layer=48, n_embd=1600, n_head=25)),
)}


@dataclass
class LoadedModel:
    """A GPT-2 ready for the pipeline, with where it came from."""
    name: str
    model: GPT2LMHeadModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    random_weights: bool

    @property
    def config(self) -> GPT2Config:
        return self.model.config


def parameter_count(config: GPT2Config) -> int:
    """GPT-2's parameters from its config (LM head tied to the token embedding)."""
    d, inner = config.n_embd, config.n_inner or 4 * config.n_embd
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * inner + inner) + (inner * d + d)
    return config.vocab_size * d + config.n_positions * d + config.n_layer * per_block + 2 * d


def zoo_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(ZOO)} "
                         f"(or random:<name>), see `nxcompile models`")
    return ZOO[name]


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def find_in_hf_cache(entry: ZooEntry) -> Path | None:
    """The snapshot folder of the first of the entry's hub ids that is cached with weights."""
    from huggingface_hub import try_to_load_from_cache

    for hub_id in entry.hub_ids:
        config_file = try_to_load_from_cache(hub_id, "config.json")
        if isinstance(config_file, str) and _is_checkpoint_dir(Path(config_file).parent):
            return Path(config_file).parent
    return None


def local_weights(entry: ZooEntry, model_path: Path | None = None) -> Path | None:
    """Where this entry's real weights are on this machine, or None."""
    if not entry.hub_ids:
        return SHIPPED_TINY_DIR if _is_checkpoint_dir(SHIPPED_TINY_DIR) else None
    if model_path is not None:
        return model_path
    return find_in_hf_cache(entry)


def _missing_weights_message(entry: ZooEntry) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (f"weights for {entry.name} not found: looked in the Hugging Face cache {HF_HUB_CACHE} "
            f"for {' or '.join(entry.hub_ids)}; pass --model-path DIR (a folder with config.json "
            f"and model.safetensors, e.g. copied from a machine with internet), or use "
            f"random:{entry.name} for shape-only work")


def _load_pretrained(path: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    if not path.is_dir():
        raise UsageError(f"--model-path {path} is not a folder; give the folder holding "
                         f"config.json and model.safetensors")
    if not _is_checkpoint_dir(path):
        raise UsageError(f"{path} is not a GPT-2 checkpoint: it needs config.json and one of "
                         f"{', '.join(WEIGHT_FILES)}")
    config = GPT2Config.from_pretrained(path, local_files_only=True)
    if config.model_type != "gpt2":
        raise UsageError(f"{path} holds a {config.model_type!r} model, not GPT-2; "
                         f"nxcompile converts GPT-2 checkpoints only")
    try:
        model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"could not read the GPT-2 weights in {path} ({exc}); "
                         f"re-copy the checkpoint") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} has weights but no usable tokenizer files ({exc}); copy "
                         f"tokenizer.json or vocab.json + merges.txt beside them") from exc
    return model.eval(), tokenizer


def _check_architecture(entry: ZooEntry, config: GPT2Config, where: Path) -> None:
    """A folder given for a zoo name must hold that size, or every figure is mislabelled."""
    found = dict(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head)
    expected = {k: entry.architecture[k] for k in found} if entry.architecture else found
    if found != expected:
        raise UsageError(f"{where} holds a GPT-2 with {found}, but {entry.name} has {expected}; "
                         f"pass the matching zoo name (see `nxcompile models`)")


def shipped_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(SHIPPED_TINY_DIR, local_files_only=True)


def _build_random(entry: ZooEntry) -> LoadedModel:
    """Seeded random weights; the shipped byte-level BPE feeds it (its ids fit every vocab)."""
    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    model = GPT2LMHeadModel(entry.config()).eval()
    return LoadedModel(f"{RANDOM_PREFIX}{entry.name}", model, shipped_tokenizer(),
                       f"{RANDOM_WEIGHTS_WARNING} (architecture of {entry.name}, seed "
                       f"{RANDOM_WEIGHTS_SEED})", random_weights=True)


def load_model(spec: str, model_path: Path | None = None) -> LoadedModel:
    """Load a zoo model by name, `random:<name>`, with weights from `model_path` if given."""
    if spec.startswith(RANDOM_PREFIX):
        return _build_random(zoo_entry(spec[len(RANDOM_PREFIX):]))
    entry = zoo_entry(spec)
    where = local_weights(entry, model_path)
    if where is None:
        raise UsageError(_missing_weights_message(entry))
    model, tokenizer = _load_pretrained(Path(where))
    _check_architecture(entry, model.config, Path(where))
    return LoadedModel(entry.name, model, tokenizer, str(where), random_weights=False)


def shipped_graph(model_name: str, method: str) -> Path | None:
    """The fine-tuned spiking graph shipped for this model and conversion method, if any."""
    path = SHIPPED_GRAPHS.get((model_name, method))
    return path if path is not None and path.is_file() else None


def check_device(name: str) -> None:
    """A device name a model can run on on this machine (`--device`), or one line saying why not."""
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"unknown --device {name!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but this torch sees no CUDA device; use --device cpu")
