"""Fine-tuning a converted GPT-2 with lava-dl slayer's surrogate gradients (NeurTransformer step 3).

The spiking graph runs in the reference executor with every neuron's spike
replaced by lava-dl slayer's spike function (`slayer.spike.Spike`: a Heaviside
step forward, slayer's exponential surrogate backward). Our neurons reset by
subtraction and restart each token at v_init, which slayer's CUBA classes do
not do, so the dynamics stay ours and slayer supplies the spike and its
gradient; with a threshold of one on v / theta the threshold trains too.

What trains: scope `ssa` (the method's step 3) takes each block's Q, K and V
populations (weights, biases, thresholds), the SSA neurons' thresholds and the
attention output projection; scope `all` takes every on-chip population and
readout. The rest (embedding, LayerNorms, LM head) stays frozen.

Quantisation-aware: every forward pass uses `compiler.quantize.on_grid` of the
trainable ops, with the straight-through estimator for the rounding, so the
loss is that of the fixed-point network the target runs, and the saved graph
holds exactly the on-grid values the quantiser will find again. Weight layers
(the graded method's, and the rate-coded methods' Dense) train on the grid their
graph records (`SpikingGraph.weight_grid`: each layer's width and pruned fraction,
as `nxcompile fit` chose or `--weight-bits` / `--sparsity` ask): each step prunes
by magnitude and rounds to nearest (`graded_on_grid`, `on_grid`), the gradient
passing through both, so a pruned
synapse can grow back in place of a kept one (with `prune_steps` the pruned fractions
grow from 0 to the grid's along Zhu & Gupta's cubic, "To prune, or not to prune",
2017, instead of all at the first step); the graded messages' own rounding
(payload bits, integer exp / GELU / LayerNorm) is left to the fixed-point
scoring, as it costs gpt2-tiny nothing measurable at 8 bits, except a KV cache the
grid narrows below 8 bits (`--kv-bits`): keys and values then reach the attention
on the cache's payload grid, rounded as the chip holds them (`kv_cache_grids`).

Loss = lm_weight * next-token cross-entropy + kl_weight * KL(ANN logits || SNN
logits) + hidden_weight * the mean over blocks of (1 - cosine) between the ANN's
and the SNN's residual streams. The learning rate is constant or warms up
linearly and then decays along a cosine to a tenth (`schedule`), as gpt2-tiny's own
training did.
Deterministic for a seed: step s draws its windows from a generator seeded
with (seed, s), so a resumed run draws what an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lava.lib.dl.slayer.spike.spike import Spike
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from nxcompile.compiler.graph import (SSA, Add, Attention, Dense, Encode, GradedDense, GradedPrecision, NeuronModel,
                                     SpikingGraph)
from nxcompile.compiler.quantize import graded_on_grid, on_grid, quantisable, quantize
from nxcompile.compiler.targets import Target
from nxcompile.distributed import ONE, Ranks
from nxcompile.errors import UsageError
from nxcompile.files import write_atomically
from nxcompile.sim import reference
from nxcompile.models.train_tiny import learning_rate as warmup_cosine
from nxcompile.sim.evaluate import ann_forward

SCOPES = ("ssa", "all")
SCHEDULES = ("constant", "cosine")
STEP_SIZES = ("absolute", "relative")
# slayer's surrogate on v / theta: derivative scale_rho / (2 tau_rho) * exp(-|v/theta - 1| / tau_rho),
# slayer's own defaults (tau_grad = scale_grad = 1 in its neuron classes).
TAU_RHO = 1.0
SCALE_RHO = 1.0
# Tensor fields each op type trains, as paths into the op.
TRAINABLE_FIELDS = {Dense: ("weight", "bias", "neuron.threshold"), SSA: ("neuron.threshold",),
                    Encode: ("gain", "bias", "neuron.threshold"),
                    Add: ("scale_a", "scale_b", "bias", "neuron.threshold"), GradedDense: ("weight", "bias")}
MIN_THRESHOLD = 1e-6


@dataclass(frozen=True)
class FinetuneOptions:
    """One fine-tuning run (the CLI's flags take their defaults from here)."""
    steps: int = 200
    learning_rate: float = 1e-3
    batch_size: int = 2
    context: int = 256
    timesteps: int = 8
    scope: str = "ssa"
    seed: int = 0
    kl_weight: float = 1.0
    hidden_weight: float = 1.0
    lm_weight: float = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    step_size: str = "absolute"
    prune_steps: int = 0
    device: str = "cpu"
    recompute: bool = False       # activation checkpointing: the same steps in less memory, slower
    fsdp: bool = False            # shard the trained tensors, gradients and Adam over the ranks

    def __post_init__(self):
        checks = [(self.steps >= 0, "steps must be >= 0"),
                  (self.learning_rate > 0, "the learning rate must be > 0"),
                  (self.batch_size > 0 and self.context > 1 and self.timesteps > 0,
                   "batch size, context (> 1) and timesteps must be positive"),
                  (self.scope in SCOPES, f"unknown scope {self.scope!r}; choose {SCOPES}"),
                  (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose {SCHEDULES}"),
                  (self.warmup_steps >= 0 and self.prune_steps >= 0, "warm-up and pruning steps must be >= 0"),
                  (self.step_size in STEP_SIZES, f"unknown step size {self.step_size!r}; choose {STEP_SIZES}"),
                  (min(self.kl_weight, self.hidden_weight, self.lm_weight) >= 0
                   and max(self.kl_weight, self.hidden_weight, self.lm_weight) > 0,
                   "loss weights must be >= 0 and not all 0")]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


def learning_rate_at(step: int, options: FinetuneOptions) -> float:
    """The learning rate of step `step` (0-based): a function of the step alone, so a resumed
    run follows the same schedule. `cosine` is the schedule that trained gpt2-tiny itself."""
    if options.schedule == "cosine":
        return warmup_cosine(step, options.steps, options.learning_rate, options.warmup_steps)
    return options.learning_rate * min(1.0, (step + 1) / max(1, options.warmup_steps))


def pruned_share(step: int, options: FinetuneOptions) -> float:
    """The share of its grid's pruned fraction each layer has at step `step` (0-based): all of it
    from the first step, or growing along a cubic over `prune_steps` steps (Zhu & Gupta 2017: fast
    while the network has synapses to spare, slowly towards the end, so it adapts as they go)."""
    if options.prune_steps == 0:
        return 1.0
    return 1.0 - (1.0 - min(1.0, (step + 1) / options.prune_steps)) ** 3


def slayer_spike(neuron: NeuronModel, v_over_threshold: torch.Tensor) -> torch.Tensor:
    """The spike a neuron sends, through slayer's surrogate-gradient spike function.
    Binary: H(v/theta - 1); ternary: H(v/theta - 1) - H(-v/theta - 1) (identical to
    `reference.spike_levels`). A graded payload (floor(v/theta), up to 255 levels)
    would need one slayer spike per level; it sends its exact level and passes the
    gradient straight through within its range instead."""
    if neuron.payload_max > 1:
        inside = v_over_threshold.clamp(*reference.payload_range(neuron))
        return inside + (reference.spike_levels(neuron, v_over_threshold.detach()) - inside).detach()
    spike = Spike.apply
    up = spike(v_over_threshold, 1.0, TAU_RHO, SCALE_RHO, False, 0, 1)
    return up - spike(-v_over_threshold, 1.0, TAU_RHO, SCALE_RHO, False, 0, 1) if neuron.signed else up


def _get(op, path: str):
    for part in path.split("."):
        op = getattr(op, part) if op is not None else None
    return op


def _set(op, path: str, value):
    head, _, rest = path.partition(".")
    return dataclasses.replace(op, **{head: _set(getattr(op, head), rest, value) if rest else value})


# The parts of an attention branch scope `ssa` trains: Q, K, V, the attention op and its output projection.
SSA_SCOPE_PARTS = ("q", "k", "v", "op", "output")


def trainable_nodes(spiking: SpikingGraph, scope: str) -> list[str]:
    """The nodes a scope trains: ssa = each block's Q/K/V, SSA and attention output projection."""
    names = []
    for name in spiking.order():
        node = spiking.graph.nodes[name]
        if not quantisable(spiking, name) or type(node["op"]) not in TRAINABLE_FIELDS:
            continue          # host nodes and graded adds: nothing on chip to train
        role = node["role"]
        if scope == "all" or (role.branch == "attention" and role.part in SSA_SCOPE_PARTS):
            names.append(name)
    return names


def kv_cache_grids(spiking: SpikingGraph, target: Target) -> dict[str, Attention]:
    """Each softmax attention with its keys and values rounded to the payloads the deployed KV cache
    holds, where the grid narrows the cache below its default 8 bits (at 8 bits the cache costs
    nothing measurable: graded study, -0.00 %); the formats are the quantiser's own."""
    grid = spiking.weight_grid()
    attentions = [n for n in spiking.order() if isinstance(spiking.op(n), Attention)]
    if not attentions or grid.kv_bits >= GradedPrecision.kv_bits:
        return {}
    formats = quantize(spiking, target, grid).quantization.layers
    return {name: dataclasses.replace(spiking.op(name), kv_grid=tuple(
        (formats[source].bits, formats[source].frac) for source in (spiking.inputs(name)[p] for p in "kv")))
        for name in attentions}


class TrainableGraph(torch.nn.Module):
    """The trainable tensors of a spiking graph as parameters, and the on-grid ops they make."""

    def __init__(self, spiking: SpikingGraph, names: list[str], target: Target):
        super().__init__()
        self.spiking, self.target, self.names = spiking, target, names
        self.fields = {name: [p for p in TRAINABLE_FIELDS[type(spiking.op(name))]
                              if _get(spiking.op(name), p) is not None] for name in names}
        self.params = torch.nn.ParameterDict()
        for name in names:
            op = spiking.op(name)
            for path in self.fields[name]:
                self.params[self.key(name, path)] = torch.nn.Parameter(_get(op, path).detach().clone())
        self.grid, self.pruned_share = spiking.weight_grid(), 1.0
        # Frozen on-chip nodes run on the grid too: the loss is the deployed network's.
        self.frozen = {name: self._on_grid(name, spiking.op(name)) for name in spiking.order()
                       if quantisable(spiking, name) and name not in names}
        self.kv_grids = kv_cache_grids(spiking, target)      # training's only: the graph keeps its attention

    @staticmethod
    def key(name: str, path: str) -> str:
        return f"{name}/{path}".replace(".", ":")

    def tensors(self, name: str) -> dict[str, torch.nn.Parameter]:
        """The trained tensors of node `name`, by their path into its op."""
        return {path: self.params[self.key(name, path)] for path in self.fields[name]}

    def _float_op(self, name: str, detached: bool):
        """The op with its current parameters (a neuron keeps the value its spikes stood for)."""
        op = self.spiking.op(name)
        if getattr(op, "neuron", None) is not None and not op.neuron.value.numel():
            op = _set(op, "neuron.value", op.neuron.spike_value.clone())
        for path, value in self.tensors(name).items():
            value = value.clamp(min=MIN_THRESHOLD) if path.endswith("threshold") else value
            op = _set(op, path, value.detach() if detached else value)
        return op

    def _on_grid(self, name: str, op, pruned_share: float = 1.0):
        """`op` (node `name`'s) on the grid the deployed network holds it on, with `pruned_share` of
        its pruned fraction (the share training has reached)."""
        if isinstance(op, GradedDense):
            return graded_on_grid(op, self.grid.weight_bits_of(name), self.grid.sparsity_of(name) * pruned_share)
        return on_grid(op, self.target, self.grid.weight_bits_of(name), self.grid.sparsity_of(name) * pruned_share)

    def grid_op(self, name: str):
        """The op on the target's grid; gradients pass the rounding straight through."""
        with torch.no_grad():
            fixed = self._on_grid(name, self._float_op(name, detached=True), self.pruned_share)
        op = self._float_op(name, detached=False)
        for path in self.fields[name]:
            trained = _get(op, path)
            op = _set(op, path, trained + (_get(fixed, path) - trained).detach())
        return op

    def grid_ops(self) -> dict:
        return self.frozen | self.kv_grids | {name: self.grid_op(name) for name in self.names}

    def deployable(self) -> SpikingGraph:
        """A copy of the graph with the trained ops on the grid: the checkpoint the compiler reads."""
        graph = self.spiking.graph.copy()
        for name, op in self.frozen.items():
            graph.nodes[name]["op"] = op
        with torch.no_grad():
            for name in self.names:
                graph.nodes[name]["op"] = self._on_grid(name, self._float_op(name, detached=True))
        return SpikingGraph(graph, json.loads(json.dumps(self.spiking.meta)))      # the grid recorded with it


def distillation_loss(run: reference.RunResult, ids: torch.Tensor, ann_logits: torch.Tensor,
                      ann_hidden: list[torch.Tensor], options: FinetuneOptions) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy, KL to the ANN's logits and (1 - cos) to its residual streams."""
    logits = run.logits
    lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    kl = F.kl_div(F.log_softmax(logits, -1).flatten(0, 1), F.log_softmax(ann_logits, -1).flatten(0, 1),
                  log_target=True, reduction="batchmean")
    hidden = torch.stack([1 - F.cosine_similarity(run.hidden[b], h, dim=-1).mean()
                          for b, h in enumerate(ann_hidden)]).mean()
    total = options.lm_weight * lm + options.kl_weight * kl + options.hidden_weight * hidden
    return {"loss": total, "lm": lm, "kl": kl, "hidden": hidden}


def batch_for_step(train_windows: torch.Tensor, step: int, options: FinetuneOptions) -> torch.Tensor:
    """The windows of one step, the same whether the run was resumed or not."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
    pick = torch.randint(0, len(train_windows), (options.batch_size,), generator=generator)
    return train_windows[pick]


@dataclass
class TrainState:
    """What resuming needs: the step reached, parameters off the grid, optimiser moments."""
    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict
    options: dict
    losses: list[float]
    rank_bytes: int = 0      # what this rank held of the trained tensors, their gradients and Adam's moments

    def save(self, path: Path) -> None:
        state = dataclasses.asdict(self)
        write_atomically(path, lambda tmp: torch.save(state, tmp), "choose a writable --output path")

    @staticmethod
    def load(path: Path) -> TrainState:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)   # data only, never code
            return TrainState(**state)
        except Exception as exc:   # torch raises many types for a foreign or corrupt file
            raise UsageError(f"{path} is not an nxcompile fine-tuning state ({type(exc).__name__}); "
                             f"delete it or leave out --resume") from exc


def parameter_groups(trainable: TrainableGraph, step_size: str) -> list[dict]:
    """Adam moves every parameter by about the learning rate per step, whatever its size. `absolute`
    keeps that (one group). `relative` gives each tensor the learning rate times its initial RMS, so
    a step changes every tensor by the same fraction of itself: a graded population's spikes stand
    for about 1/255 of a binary one's, so its thresholds and the weights reading it are that much
    smaller, and absolute steps of 1e-3 rewrite them many times over (README, the study's
    `graded-all`). A tensor that starts at zero (an encoder's bias) takes the RMS of its op's
    threshold, the unit of the current it adds to, or of a readout's weight.
    Groups name their parameters by key (`with_parameters` puts the tensors in): FSDP replaces
    every parameter by its shard, after the units are measured on the whole tensors."""
    if step_size == "absolute":
        return [{"params": list(trainable.params), "unit": 1.0}]
    return [{"params": [trainable.key(name, path)], "unit": relative_unit(trainable.tensors(name), path)}
            for name in trainable.names for path in trainable.fields[name]]


def with_parameters(groups: list[dict], trainable: TrainableGraph) -> list[dict]:
    """`parameter_groups` with each key replaced by the trainable's parameter now under it."""
    return [group | {"params": [trainable.params[key] for key in group["params"]]} for group in groups]


def relative_unit(tensors: dict[str, torch.Tensor], path: str) -> float:
    """The size `relative` steps of an op's tensor at `path` are a fraction of: its RMS, else the
    op's threshold's or weight's."""
    for candidate in (path, "neuron.threshold", "weight"):
        tensor = tensors.get(candidate)
        if tensor is not None and tensor.detach().abs().max() > 0:
            return float(tensor.detach().pow(2).mean().sqrt())
    raise ValueError(f"{path}: no non-zero tensor to size its steps by")


def state_path(output: Path) -> Path:
    return output.with_name(output.name + ".train-state.pt")


class StepLoss(torch.nn.Module):
    """One step's forward pass, the spiking graph on the grid against the ANN's outputs, as a module:
    what DistributedDataParallel wraps to average the gradients of the trainable tensors over ranks."""

    def __init__(self, trainable: TrainableGraph, options: FinetuneOptions):
        super().__init__()
        self.trainable, self.options = trainable, options

    def forward(self, ids: torch.Tensor, ann_logits: torch.Tensor, ann_hidden: list[torch.Tensor]) -> dict:
        run = reference.run(self.trainable.spiking, ids, self.options.timesteps, ops=self.trainable.grid_ops(),
                            spike=slayer_spike, recompute=self.options.recompute)
        return distillation_loss(run, ids, ann_logits, ann_hidden, self.options)


def finetune(model, spiking: SpikingGraph, train_windows: torch.Tensor, target: Target,
             options: FinetuneOptions, resume: TrainState | None = None,
             on_step: Callable[[int, dict[str, float]], None] | None = None,
             on_checkpoint: Callable[[TrainableGraph, TrainState], None] | None = None,
             checkpoint_every: int = 50, ranks: Ranks = ONE) -> tuple[TrainableGraph, TrainState]:
    """Train the scope's tensors of `spiking` against `model` (the ANN) on `train_windows` [N, context].
    `on_step` hears each step's losses (a progress bar); `on_checkpoint` gets the graph and the
    resumable state every `checkpoint_every` steps before the last (the caller saves what it returns).
    Under torchrun (`ranks`) each rank takes its part of every step's global batch and DDP (or FSDP,
    `options.fsdp`) averages the gradients: the same steps, losses and graph as one process, to
    float rounding."""
    if options.batch_size % ranks.world:
        raise UsageError(f"a batch of {options.batch_size} windows cannot be split evenly over {ranks.world} ranks; "
                         f"give a --batch-size that is a multiple of {ranks.world}")
    if options.fsdp and not ranks.distributed:
        raise UsageError("--fsdp shards the training state over torchrun's ranks; start it with "
                         "`torchrun --nproc-per-node N -m nxcompile finetune ... --fsdp`, or leave out --fsdp")
    if resume is not None and not _same_run(resume.options, dataclasses.asdict(options)):
        raise UsageError("the saved fine-tuning state was made with other options; use the same ones, "
                         "or leave out --resume")
    torch.manual_seed(options.seed)
    device = torch.device(options.device)
    spiking = graph_on(spiking, device)
    model = model.to(device).eval()
    trainable = TrainableGraph(spiking, trainable_nodes(spiking, options.scope), target)
    groups = parameter_groups(trainable, options.step_size)
    if resume is not None:
        trainable.params.load_state_dict({k: v.to(device) for k, v in resume.params.items()})
    step_loss = StepLoss(trainable, options)
    forward = _over_ranks(step_loss, device, ranks, options.fsdp)
    optimizer = torch.optim.Adam(with_parameters(groups, trainable), lr=options.learning_rate)
    state = TrainState(0, {}, {}, dataclasses.asdict(options), [])
    if resume is not None:
        _load_optimizer(step_loss, optimizer, resume.optimizer)
        state = dataclasses.replace(resume, options=dataclasses.asdict(options))
    for step in range(state.step, options.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, options) * group["unit"]
        trainable.pruned_share = pruned_share(step, options)
        ids = ranks.part(batch_for_step(train_windows, step, options)).to(device)
        ann_logits, ann_hidden = ann_forward(model, ids)
        losses = forward(ids, ann_logits, ann_hidden)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        logged = dict(zip(losses, (v / ranks.world for v in ranks.sum([v.item() for v in losses.values()]))))
        state.step, state.losses = step + 1, state.losses + [logged["loss"]]
        if on_step is not None:
            on_step(step + 1, logged)
        if on_checkpoint is not None and state.step % checkpoint_every == 0 and state.step < options.steps:
            snapshot = _snapshot(step_loss, optimizer, state)
            with _whole(step_loss):
                on_checkpoint(trainable, snapshot)
    state.rank_bytes = held_bytes(optimizer)
    snapshot = _snapshot(step_loss, optimizer, state)
    if isinstance(step_loss, FSDPModule):
        step_loss.unshard()          # the caller gets the whole tensors, to deploy or score
    return trainable, snapshot


def _over_ranks(step_loss: StepLoss, device: torch.device, ranks: Ranks, fsdp: bool) -> torch.nn.Module:
    """The step's forward pass as the ranks run it: alone; under DDP (every rank holds every trained
    tensor, its gradient and Adam's moments, and the gradients are averaged); or under FSDP (each
    rank holds 1 / world of them, gathered whole for the step and the gradients averaged into the
    shards), `step_loss` itself then sharded in place."""
    if fsdp:
        return fully_shard(step_loss, mesh=init_device_mesh(device.type, (ranks.world,)))
    if ranks.distributed:
        return DistributedDataParallel(step_loss, device_ids=[device.index or 0] if device.type == "cuda" else None)
    return step_loss


@contextlib.contextmanager
def _whole(step_loss: StepLoss):
    """Within it a sharded step's trained tensors are whole on every rank (a collective: every rank enters)."""
    sharded = isinstance(step_loss, FSDPModule)
    if sharded:
        step_loss.unshard()
    try:
        yield
    finally:
        if sharded:
            step_loss.reshard()


def held_bytes(optimizer) -> int:
    """Bytes of the trained tensors, their gradients and the optimiser's moments this rank holds
    (under FSDP its shards)."""
    def local(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    tensors = [t for group in optimizer.param_groups for p in group["params"] for t in (p, p.grad) if t is not None]
    tensors += [t for moments in optimizer.state.values() for t in moments.values() if isinstance(t, torch.Tensor)]
    return sum(map(local, tensors))


# The optimiser's state saved whole and keyed by parameter name, whatever the ranks and sharding:
# a run resumes with another number of ranks, with or without FSDP (rank 0 holds it; it writes the file).
WHOLE_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _load_optimizer(step_loss: StepLoss, optimizer, saved: dict) -> None:
    try:
        set_optimizer_state_dict(step_loss, optimizer, saved, options=StateDictOptions(full_state_dict=True))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UsageError(f"the saved optimiser state does not fit this run ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); delete the state or leave out "
                         f"--resume") from None


# Options a resumed run may change: the length of the run, and where and how it computes the same steps.
RESUMABLE_CHANGES = ("steps", "device", "recompute", "fsdp")


def _same_run(saved: dict, asked: dict) -> bool:
    """Whether a saved state continues the run `asked` describes."""
    def fixed(options: dict) -> dict:
        return {key: value for key, value in options.items() if key not in RESUMABLE_CHANGES}
    return fixed(saved) == fixed(asked)


def _snapshot(step_loss: StepLoss, optimizer, state: TrainState) -> TrainState:
    """The resumable state, whole (every rank enters: under FSDP it gathers the shards)."""
    optimizer_state = get_optimizer_state_dict(step_loss, optimizer, options=WHOLE_STATE)
    with _whole(step_loss):
        params = {k: v.detach().cpu().clone() for k, v in step_loss.trainable.params.items()}
    return dataclasses.replace(state, params=params, optimizer=optimizer_state)


def graph_on(spiking: SpikingGraph, device: torch.device) -> SpikingGraph:
    """A copy of the graph with every op's tensors on `device`."""
    graph = spiking.graph.copy()
    for name in graph.nodes:
        graph.nodes[name]["op"] = _op_on(graph.nodes[name]["op"], device)
    return SpikingGraph(graph, spiking.meta, spiking.quantization)


def _op_on(op, device: torch.device):
    moved = {}
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        if isinstance(value, torch.Tensor):
            moved[f.name] = value.to(device)
        elif isinstance(value, NeuronModel):
            moved[f.name] = _op_on(value, device)
    return dataclasses.replace(op, **moved)


def record_path(output: Path) -> Path:
    """The JSON beside a fine-tuned graph: its recipe, loss log and held-out figures."""
    return output.with_suffix(".json")


def with_record(graph: SpikingGraph, state: TrainState) -> SpikingGraph:
    """The graph as a checkpoint: it records its fine-tuning (and a reader says where it came from)."""
    graph.meta.pop("origin", None)
    graph.meta["finetune"] = {"options": state.options, "steps": state.step,
                              "final_loss": state.losses[-1] if state.losses else None}
    return graph


def held_out_figures(model, graphs: dict[str, SpikingGraph], windows: torch.Tensor, timesteps: int,
                     ranks: Ranks = ONE) -> dict:
    """Each graph quantised for loihi2-sim and scored in its fixed point against the ANN
    (`sim.evaluate.Evaluation` by label)."""
    from nxcompile.compiler.quantize import quantize
    from nxcompile.compiler.targets import get_target
    from nxcompile.sim import fixed_point
    from nxcompile.sim.evaluate import evaluate

    return {label: evaluate(model, quantize(graph, get_target("loihi2-sim")), windows, timesteps,
                            simulate=fixed_point.run, ranks=ranks) for label, graph in graphs.items()}


def held_out_table(figures: dict, windows: torch.Tensor, timesteps: int) -> str:
    """`held_out_figures` as the table the finetune command prints."""
    lines = [f"\nheld-out text, T = {timesteps}, {windows.numel()} tokens (reference simulator, loihi2-sim's fixed "
             f"point)",
             f"{'graph':34} {'ANN ppl':>8} {'SNN ppl':>8} {'change':>8} {'cos(lgt)':>8} {'cos(hid)':>8} {'top-1':>6}"]
    lines += [f"{label:34} {ev.ann_perplexity:>8.2f} {ev.snn_perplexity:>8.2f} {100 * ev.perplexity_change:>+7.1f}% "
              f"{ev.logits_cosine:>8.4f} {ev.mean_hidden_cosine:>8.4f} {100 * ev.top1_agreement:>5.1f}%"
              for label, ev in figures.items()]
    return "\n".join(lines)
