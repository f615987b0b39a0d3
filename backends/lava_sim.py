"""Run an nxcompile `.net` model in Lava: real Lava processes on `Loihi2SimCfg(select_tag='fixed_pt')`.

The file's graph becomes one Lava process per on-chip node (`backends.lava_processes`),
connected as the graph's edges; host nodes (embedding, final norm, LM head) run
here, between tokens: each token's embedding is set on a `HostSource`, Lava
runs the token's period of steps, and the values on the `HostSink`s go through
the host nodes to the logits. Keys and values stay in the SSA processes'
KV caches across tokens, so a prompt is fed token by token and generation
continues from it.

Timing (docs/time-semantics.md "Latency and alignment in Lava and on hardware"):
a connection takes `hop` steps (none in Lava's simulator), so a node's window
starts `hop` steps after its spiking inputs' windows and once its graded
inputs are ready; spikes that must meet spikes from deeper paths wait in delay
lines; a token's period is the step its last value reaches the host, plus one.
"""
# No `from __future__ import annotations`: Lava executes this file as a loose module while
# searching for process models, and dataclasses with string annotations fail there.
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.dense.process import Dense as LavaDense
from lava.utils.weightutils import SignMode
from nxcompile.backends import lava_processes as processes_of
from nxcompile.backends.lava_processes import HostSink, HostSource
from nxcompile.compiler.graph import SpikingGraph, out_kind
from nxcompile.errors import UsageError
from nxcompile.sim import fixed_point as fx
from nxcompile.sim.reference import execute_node
from nxcompile.sim.schedule import LAVA_HOP, schedule


def simulator_config() -> Loihi2SimCfg:
    """Lava's CPU simulator in fixed point: what loihi2-sim runs on."""
    return Loihi2SimCfg(select_tag="fixed_pt")


# integer op type -> the process that runs it (a population by its input ports)
PROCESS_OF = {fx.Readout: processes_of.Population, fx.Norm: processes_of.Norm, fx.GradedAdd: processes_of.ResidualAdd,
              fx.SpikingAttention: processes_of.SpikingSelfAttention, fx.GradedLinear: processes_of.GradedNeuron,
              fx.SoftmaxAttention: processes_of.SoftmaxAttention}


def process_class(op):
    """The Lava process class of an integer op."""
    if isinstance(op, fx.Population):
        return processes_of.ResidualAdd if op.ports == ("a", "b") else processes_of.Population
    return PROCESS_OF[type(op)]


LAVA_WEIGHT_BITS = 8          # Lava's Dense (fixed point) holds 8-bit weights


def synapses(op: fx.GradedLinear, in_bits: int, name: str) -> LavaDense:
    """Lava's own Dense process for a GradedDense's weights: 2m with sign mode MIXED (which keeps even
    8-bit weights), weight_exp = -(1 + acc_shift), graded input of `in_bits` bits; it sends
    `op.accumulate` of its input."""
    return LavaDense(weights=2 * op.weight, weight_exp=-(1 + op.acc_shift), num_message_bits=in_bits,
                     sign_mode=SignMode.MIXED, num_weight_bits=LAVA_WEIGHT_BITS, name=f"{name}.synapses")


@contextmanager
def deferred_interrupt():
    """Ctrl-C waits until Lava is between steps: a runtime interrupted while it compiles, starts
    its workers or runs a token cannot be stopped cleanly. Workers forked meanwhile inherit the
    handler, so a terminal's Ctrl-C (sent to every process) leaves them to the main process's
    clean stop. The interrupt is raised on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


@dataclass
class TokenRecord:
    """What every on-chip node sent during one token (spikes [T, N] or a payload [N]) and what the
    host sent to the chip (its values [N], as the reference holds them)."""
    sent: dict[str, np.ndarray] = field(default_factory=dict)
    host: dict[str, np.ndarray] = field(default_factory=dict)


class LavaModel:
    """A spiking graph built as Lava processes, run token by token.

    Use as a context manager (Lava's runtime is stopped on exit, also on Ctrl-C):
        with LavaModel(graph) as model:
            logits = model.feed(token_ids)
    """

    def __init__(self, spiking: SpikingGraph, timesteps: int | None = None, placement=None,
                 run_config=None, record: bool = False):
        self.spiking = spiking
        self.timesteps = timesteps or int(spiking.meta.get("options", {}).get("timesteps", 1))
        self.program = fx.integer_program(spiking)
        _check_lava_precision(spiking)
        self.plan = schedule(spiking, self.program, self.timesteps)
        self.host_ops = {name: fx.in_float64(spiking.op(name)) for name in self.plan.host_after}
        self.run_config = run_config or simulator_config()
        self.record = record
        self.kv_capacity = min((op.kv_capacity for op in self.program.values() if hasattr(op, "kv_capacity")),
                               default=None)
        self.processes, self.synapses, self.sources, self.sinks = self._build(_cores_by_node(placement))
        self.token_ids: list[int] = []
        self.steps_run = 0
        self.lava_seconds = 0.0        # inside Lava's run of each token's steps
        self.token_seconds = 0.0       # whole tokens as a caller waits for them, compile left out
        self.records: list[TokenRecord] = []
        self.logits: list[torch.Tensor] = []
        self._started = False
        self.compile_seconds = 0.0

    # -- building ---------------------------------------------------------------------------------
    def _build(self, cores: dict[str, list[int]]):
        spiking, T = self.spiking, self.timesteps
        processes = {}
        for name, op in self.program.items():
            sizes = {port: spiking.op(source).out_features for port, source in spiking.inputs(name).items()}
            if isinstance(op, fx.GradedLinear):       # the neurons read their synapses' sums, one per neuron
                sizes = {"x": spiking.op(name).out_features}
            rows = T if op.sends_spikes else 1
            processes[name] = process_class(op)(
                name=name, op=op, timing=self.plan.timings[name], period=self.plan.period, timesteps=T,
                in_sizes=sizes, out_size=spiking.op(name).out_features, record_rows=rows, cores=cores.get(name))
        sources = {name: HostSource(name=f"host:{name}", size=spiking.op(name).out_features)
                   for name in self.plan.host_before if any(s in self.program for s in spiking.graph.successors(name))}
        dense = {name: synapses(op, fx.message_bits(spiking, spiking.inputs(name)["x"]), name)
                 for name, op in self.program.items() if isinstance(op, fx.GradedLinear)}
        sinks = {}
        for name in self.plan.host_after:
            for source in spiking.graph.predecessors(name):
                if source in self.program and source not in sinks:
                    spikes = out_kind(spiking.op(source)) != "graded"
                    window = (self.plan.timings[source].start + LAVA_HOP, T, self.plan.period) if spikes else None
                    sinks[source] = HostSink(name=f"host:{source}", size=spiking.op(source).out_features,
                                             window=window)
                    processes[source].out.connect(sinks[source].inp)
        for name in self.program:
            for port, source in spiking.inputs(name).items():
                sender = processes[source].out if source in processes else sources[source].out
                if name in dense:
                    sender.connect(dense[name].s_in)
                    dense[name].a_out.connect(getattr(processes[name], port))
                else:
                    sender.connect(getattr(processes[name], port))
        return processes, dense, sources, sinks

    # -- running ----------------------------------------------------------------------------------
    def __enter__(self) -> "LavaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops Lava's runtime (its worker processes) if it was started."""
        if self._started:
            self._started = False
            self._anchor.stop()

    @property
    def _anchor(self):
        """Any process: Lava compiles, runs and stops the whole connected network through one."""
        return next(iter(self.processes.values()))

    def start(self) -> None:
        """Compiles the processes and starts Lava's runtime (its worker processes)."""
        started = time.perf_counter()
        self._started = True
        self._anchor.create_runtime(run_cfg=self.run_config)
        self.compile_seconds = time.perf_counter() - started

    def _host_before(self) -> dict[str, torch.Tensor]:
        ids = torch.tensor([self.token_ids])
        values: dict[str, torch.Tensor] = {}
        for name in self.plan.host_before:
            values[name] = execute_node(self.spiking.op(name), {p: values[s] for p, s in
                                                                self.spiking.inputs(name).items()}, ids,
                                        self.timesteps)[:, -1:]
        return values

    def step_token(self, token_id: int) -> torch.Tensor:
        """Feeds one token (after the ones fed before) and returns its logits [vocab]."""
        if self.kv_capacity is not None and len(self.token_ids) >= self.kv_capacity:
            raise UsageError(f"the sequence is longer than the KV cache ({self.kv_capacity} tokens, the model's "
                             f"context); use a shorter prompt or fewer new tokens")
        token_started = time.perf_counter()
        self.token_ids.append(int(token_id))
        before = self._host_before()
        payloads = {name: fx.to_payload(before[name][0, 0].double().numpy()).astype(np.int32)
                    for name in self.sources}
        with deferred_interrupt():     # Lava stops cleanly only once a started runtime finished its steps
            if not self._started:       # Lava sets Vars only once it has run: the first token is their initial value
                for name, source in self.sources.items():
                    source.payload.init = payloads[name]
                self.start()
            else:
                for name, source in self.sources.items():
                    source.payload.set(payloads[name])
            started = time.perf_counter()
            self._anchor.run(condition=RunSteps(num_steps=self.plan.period))
            self.lava_seconds += time.perf_counter() - started
        self.steps_run += self.plan.period
        if self.record:
            self.records.append(TokenRecord({name: p.record.get().astype(np.int64)
                                             for name, p in self.processes.items()},
                                            {name: before[name][0, 0].numpy() for name in self.sources}))
        logits = self._host_after(before)[0, 0]
        self.logits.append(logits)
        self.token_seconds += time.perf_counter() - token_started - (self.compile_seconds if len(self.token_ids) == 1
                                                                     else 0.0)
        return logits

    def _host_after(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = torch.tensor([self.token_ids])
        for source, sink in self.sinks.items():
            values[source] = fx.to_host(self.spiking.op(source), sink.payload.get()[None, None].astype(np.int64),
                                        self.timesteps)
        for name in self.plan.host_after:
            inputs = {p: values[s] for p, s in self.spiking.inputs(name).items()}
            values[name] = execute_node(self.host_ops[name], inputs, ids[:, -1:], self.timesteps)
        return values[self.spiking.meta["logits_node"]].float()

    def feed(self, token_ids: list[int], progress: bool = True) -> torch.Tensor:
        """Logits [len, vocab] for each token of `token_ids`, fed one by one."""
        rows = [self.step_token(t) for t in tqdm(token_ids, desc="Lava", unit="token", disable=not progress,
                                                  leave=False)]
        return torch.stack(rows)

    def generate_from(self, logits: torch.Tensor, max_new_tokens: int, progress: bool = True) -> list[int]:
        """Greedy continuation (argmax) from the last fed token's logits, one Lava period per token."""
        new: list[int] = []
        for _ in tqdm(range(max_new_tokens), desc="Lava generate", unit="token", disable=not progress, leave=False):
            new.append(int(logits.argmax()))
            if len(new) < max_new_tokens:
                logits = self.step_token(new[-1])
        return new

    def recorded_values(self) -> dict[str, np.ndarray]:
        """What every on-chip node sent, over every token fed, shaped as the reference's values
        ([1, tokens, T, N] spikes, [1, tokens, N] payloads and host inputs),
        so `sim.energy.count` reads this run's own spikes. Needs record=True."""
        if not self.records:
            raise UsageError("this Lava run kept no records; build LavaModel(..., record=True)")
        values = {}
        for name, op in self.program.items():
            sent = np.stack([r.sent[name] for r in self.records])[None]
            values[name] = sent if op.sends_spikes else sent[:, :, 0]
        for name in self.sources:
            values[name] = np.stack([r.host[name] for r in self.records])[None]
        return values

    def compare(self, twin) -> list[str]:
        """Nodes (and "logits") where this run differs from the reference's fixed-point run of the
        same tokens (`sim.fixed_point.run(..., keep_values=True)` on [1, tokens]); needs record=True."""
        recorded = self.recorded_values()
        differing = [name for name in self.program if not np.array_equal(recorded[name], twin.values[name])]
        if not torch.equal(torch.stack(self.logits), twin.logits[0]):
            differing.append("logits")
        return differing

    @property
    def tokens_run(self) -> int:
        return len(self.token_ids)

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.lava_seconds if self.lava_seconds else 0.0

    def speed(self) -> str:
        """Seconds per token as a caller waits for them, beside the part Lava's own steps take."""
        tokens = max(1, self.tokens_run)
        recording = ", reading every layer's record" if self.record else ""
        return (f"{self.token_seconds / tokens:.2f} s per token wall (host embedding and LM head, Lava{recording}); "
                f"Lava's steps {self.lava_seconds / tokens:.2f} s per token ({self.plan.period} steps at "
                f"{self.steps_per_second:.0f} steps/s); compile {self.compile_seconds:.1f} s")


def _check_lava_precision(spiking: SpikingGraph) -> None:
    """Lava's Dense holds 8-bit weights and the KV cache 8-bit values: wider ones (the graded method's
    study) run in the reference simulator only."""
    precision = spiking.quantization.precision if spiking.quantization is not None else None
    if precision is not None and max(precision.weight_bits, precision.kv_bits) > LAVA_WEIGHT_BITS:
        raise UsageError(f"this graph holds {precision.weight_bits}-bit weights and {precision.kv_bits}-bit keys "
                         f"and values; Lava's Dense and the KV cache hold {LAVA_WEIGHT_BITS} bits: quantise with the "
                         f"default precision to run it in Lava")


def _cores_by_node(placement) -> dict[str, list[int]]:
    """The cores the partitioner gave each node's blocks (passed to the processes for hardware)."""
    cores: dict[str, list[int]] = {}
    for block in placement.blocks if placement is not None else ():
        cores.setdefault(block.layer, []).append(block.core)
    return cores


def run_netx(path, spikes_in: np.ndarray, steps: int, run_config=None, skip_layers: int = 0,
             reset_interval: int | None = None, reset_offset: int = 0, every_layer: bool = False):
    """A foreign lava-dl netx network, built by netx's own builders and run on `spikes_in` [..., time]
    for `steps`; returns the output layer's messages [..., steps], or with `every_layer` the messages
    of each of netx's layers (the on-chip layers, in order) as a list. nxcompile's loader reads the
    file first, so a damaged or unsupported file fails with one line."""
    from lava.lib.dl import netx
    from lava.proc import io

    from nxcompile.compiler.layers import network_from_netx

    network_from_netx(path, skip_layers)
    try:
        net = netx.hdf5.Network(net_config=str(path), skip_layers=skip_layers, reset_interval=reset_interval,
                                reset_offset=reset_offset)
    except (NotImplementedError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"lava-dl netx cannot build {path} ({type(exc).__name__}: {exc})") from None
    # An input block is fed at its neurons (netx's own tests do so; Lava has no compiler for the block's port).
    inp = net.in_layer.neuron.a_in if isinstance(net.in_layer, netx.blocks.process.Input) else net.inp
    if tuple(spikes_in.shape[:-1]) != tuple(inp.shape):
        raise UsageError(f"the input has shape {spikes_in.shape[:-1]} per step, but {path} expects "
                         f"{tuple(inp.shape)}")
    source = io.source.RingBuffer(data=spikes_in)
    source.s_out.connect(inp)
    recorded = net.layers if every_layer else [net.out_layer]
    sinks = [io.sink.RingBuffer(shape=layer.out.shape, buffer=steps) for layer in recorded]
    for layer, sink in zip(recorded, sinks):
        layer.out.connect(sink.a_in)
    try:
        with deferred_interrupt():
            net.run(condition=RunSteps(num_steps=steps), run_cfg=run_config or simulator_config())
        messages = [sink.data.get() for sink in sinks]
    finally:
        net.stop()
    return messages if every_layer else messages[0]
