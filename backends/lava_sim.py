"""Run an nxcompile `.net` model in Lava: real Lava processes on `Loihi2SimCfg(select_tag='fixed_pt')`.

The file's on-chip nodes run in Lava processes (`backends.lava_processes`): by
default one per transformer block, its nodes stepped in the graph's order inside
(`process_groups`; `grouping="node"`: one per node), and Lava's own Dense
process for each GradedDense's synapses, connected as the graph's edges; host
nodes (embedding, final norm, LM head) run here. A prompt, whose token ids are known in advance, runs in one go: a
`HostSource` holds every prompt token's embedding and sends token i's as it
enters, every `interval` steps (the schedule's initiation interval: T for
rate-coded populations, 1 for the graded method), so the tokens flow through
the layers one behind another; the `HostSink`s keep what reaches the host for
each token, and the host's final norm and LM head turn it into logits.
Generation then goes token by token (a generated token exists only once the one
before it is out): the host sets its embedding on the source and Lava runs one
period. Keys and values stay in the attention nodes' KV caches throughout.

Timing (docs/time-semantics.md): `sim.schedule` says at which step after a
token's entry each node works on it; `sim.schedule.TokenClock` when each token
enters.
"""
# No `from __future__ import annotations`: Lava executes this file as a loose module while
# searching for process models, and dataclasses with string annotations fail there.
import logging
import multiprocessing
from multiprocessing.process import BaseProcess
import signal
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits
from tqdm import tqdm

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import AbstractLoihiSimRunCfg, Loihi2SimCfg
from lava.proc.dense.models import PyDenseModelBitAcc
from lava.proc.dense.process import Dense as LavaDense
from lava.proc.sparse.models import PySparseModelBitAcc
from lava.proc.sparse.process import Sparse as LavaSparse
from lava.utils.weightutils import SignMode
from nxcompile.backends.lava_processes import Group, HostSink, HostSource, Member, group_model
from nxcompile.compiler.graph import SpikingGraph
from nxcompile.errors import NxError, UsageError
from nxcompile.memory import check_memory
from nxcompile.sim import fixed_point as fx
from nxcompile.sim.reference import execute_node
from nxcompile.sim.schedule import TokenClock, schedule

log = logging.getLogger(__name__)


def simulator_config() -> Loihi2SimCfg:
    """Lava's CPU simulator in fixed point: what loihi2-sim runs on."""
    return Loihi2SimCfg(select_tag="fixed_pt")


LAVA_WEIGHT_BITS = 8          # Lava's Dense (fixed point) holds 8-bit weights
GROUPINGS = ("block", "node")
SYNAPSES = "synapses:"        # a group input fed by the Dense before a GradedDense's neurons: "synapses:NAME"


def process_groups(spiking: SpikingGraph, program: dict, grouping: str = "block") -> dict[str, list[str]]:
    """Which on-chip nodes step in one Lava process, each group's in the graph's order: every node of a
    transformer block together ("block"; a node outside the blocks alone), or each node alone
    ("node"). Lava synchronises every process every step, which is most of a step's time on a few
    cores (bench/lava_floor.py), and a connection takes no step, so a group computes what its
    nodes' processes would. A group receives all its inputs before it sends, so two groups must
    not wait on each other: refused if the groups' direct connections form a cycle (Lava's Dense
    sends before it receives, so a path through one never waits)."""
    if grouping not in GROUPINGS:
        raise UsageError(f"unknown process grouping {grouping!r}; use one of {', '.join(GROUPINGS)}")
    groups: dict[str, list[str]] = {}
    for name in spiking.order():
        if name in program:
            block = spiking.graph.nodes[name].get("block") if grouping == "block" else None
            groups.setdefault(name if block is None else f"h{block}", []).append(name)
    group_of = {node: key for key, nodes in groups.items() for node in nodes}
    waits = nx.DiGraph()
    waits.add_nodes_from(groups)
    waits.add_edges_from((group_of[source], group_of[name]) for name in program
                         if not isinstance(program[name], fx.GradedLinear)
                         for source in spiking.inputs(name).values()
                         if source in program and group_of[source] != group_of[name])
    if not nx.is_directed_acyclic_graph(waits):
        raise NxError(f"grouping the nodes by {grouping} makes Lava processes wait on each other "
                      f"({nx.find_cycle(waits)}); use --process-grouping node")
    return groups


def synapses(op: fx.GradedLinear, in_bits: int, name: str, pruned: bool = False) -> LavaDense | LavaSparse:
    """Lava's own Dense process for a GradedDense's weights (its Sparse, holding only the kept
    synapses, for a pruned layer): 2m with sign mode MIXED (which keeps even 8-bit weights),
    weight_exp = -(1 + acc_shift), graded input of `in_bits` bits; it sends `op.accumulate` of its
    input. Both bit-accurate models compute the same sum and shift."""
    kind, weights = (LavaSparse, csr_matrix(2 * op.weight)) if pruned else (LavaDense, 2 * op.weight)
    return kind(weights=weights, weight_exp=-(1 + op.acc_shift), num_message_bits=in_bits,
                sign_mode=SignMode.MIXED, num_weight_bits=LAVA_WEIGHT_BITS, name=f"{name}.synapses")


class _Replayed:
    """An in-port that hands Lava's run_spk the message already received this step."""

    def __init__(self, message: np.ndarray):
        self.message = message

    def recv(self) -> np.ndarray:
        return self.message


class _AlreadySent:
    """An out-port that drops what Lava's run_spk sends: it was sent already this step."""

    def send(self, data) -> None:
        pass


class _SkipsIdleSteps:
    """Over Lava's bit-accurate Dense and Sparse models: a step in which no input arrived sends the
    buffered sum and buffers zero (W 0 = 0) without computing the product; any other step is Lava's
    own run_spk on the message received. Most steps are idle for most synapses (in generation one
    token is in flight), and Lava's models compute every step: random gpt2-small's graded
    generation took 5.3 s a token with them, 1.3 s so (bench/lava_per_token.py)."""

    def run_spk(self) -> None:
        if not self.weights_set:                # Lava's first step scales the weights
            super().run_spk()
            return
        self.a_out.send(self.a_buff)            # Lava's order: the last step's sum goes out first
        message = self.s_in.recv()
        if not message.any():
            self.a_buff = np.zeros_like(self.a_buff)
            return
        ports = {"a_out": self.a_out, "s_in": self.s_in}
        self.__dict__.update(a_out=_AlreadySent(), s_in=_Replayed(message))
        try:
            super().run_spk()
        finally:
            self.__dict__.update(ports)


class IdleSkippingDenseModel(_SkipsIdleSteps, PyDenseModelBitAcc):
    """Lava's bit-accurate Dense model, skipping idle steps (`_SkipsIdleSteps`)."""


class IdleSkippingSparseModel(_SkipsIdleSteps, PySparseModelBitAcc):
    """Lava's bit-accurate Sparse model, skipping idle steps (`_SkipsIdleSteps`)."""


def one_blas_thread():
    """BLAS on one thread in the worker processes Lava forks while this is open: every process
    steps at once on a few cores, and each one's own BLAS threads only fight over them (random
    gpt2-small's pipelined prompt ran 1.6x faster so; bench/lava_per_token.py)."""
    return threadpool_limits(limits=1, user_api="blas")


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


_WATCH_SECONDS = 0.25


def _worker_names(runtime) -> list[str]:
    """Lava's worker processes in the order its runtime starts them: one per Python process model,
    then the runtime services."""
    from lava.magma.compiler.builders.py_builder import PyProcessBuilder

    executable = runtime._executable
    names = [f"Lava process {process.name!r} ({type(process).__name__})"
             for process, builder in executable.proc_builders.items() if isinstance(builder, PyProcessBuilder)]
    return names + ["Lava's runtime service"] * len(executable.runtime_service_builders)


def _dead_worker(runtime) -> str | None:
    """The first of the runtime's workers that ended with a signal or an error code, described."""
    for actor, name in zip(list(runtime._messaging_infrastructure.actors), _worker_names(runtime)):
        try:
            code = actor.exitcode
        except ValueError:                      # joined and closed by a clean stop
            continue
        if code:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return f"{name} {how}"
    return None


def _end_workers(runtime) -> None:
    """After a worker died: every other worker ended, Lava's shared memory released, and the runtime
    marked stopped, so that Lava's own stop (which would wait on the dead) only joins and cleans.
    The workers are the runtime's actors and any Lava worker this process started that the interrupt
    caught before Lava listed it (forked, not yet appended to the actors)."""
    from lava.magma.runtime.message_infrastructure.multiprocessing import SystemProcess

    infrastructure = runtime._messaging_infrastructure
    workers = list(infrastructure.actors)
    workers += [child for child in multiprocessing.active_children()
                if isinstance(child, SystemProcess) and child not in workers]
    for worker in workers:
        with suppress(ValueError):
            if worker.is_alive():
                worker.kill()
    for worker in workers:
        with suppress(ValueError):
            multiprocessing.Process.join(worker, timeout=5)
    infrastructure.smm.shutdown()
    runtime._is_initialized = runtime._is_started = runtime._is_running = False


class WorkerDied(NxError):
    """One of Lava's worker processes ended mid-run (the OOM killer, a crash, a kill)."""


def _forking(frame) -> bool:
    """Whether the main thread, interrupted in `frame`, is inside `multiprocessing.Process.start`:
    an exception raised there, just after the fork returned, would lose the child from
    multiprocessing's list of children, and it would outlive the command."""
    while frame is not None:
        if frame.f_code is BaseProcess.start.__code__:
            return True
        frame = frame.f_back
    return False


@contextmanager
def worker_watchdog(process):
    """While Lava compiles, starts or runs the network of `process`, a thread checks its workers
    every quarter second; when one has died it interrupts the main thread (blocked in Lava, waiting
    on the dead, or still forking workers) with `WorkerDied`, again each quarter second until the
    main thread is outside a fork, and the main thread then ends every other worker and releases
    Lava's shared memory."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    died: list[str] = []
    done, raised = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(_WATCH_SECONDS) and not raised.is_set():
            runtime = process.runtime
            if not died and runtime is not None and getattr(runtime, "_messaging_infrastructure", None) is not None:
                death = _dead_worker(runtime)
                if death is not None:
                    died.append(death)
            if died:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def interrupt(_, frame) -> None:
        if not done.is_set() and not raised.is_set() and not _forking(frame):
            raised.set()
            raise WorkerDied(_died_message(died))

    previous = signal.signal(signal.SIGUSR1, interrupt)
    watcher = threading.Thread(target=watch, name="nxcompile-lava-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)
        if died:                                # here, where no worker is being forked any more
            _end_workers(process.runtime)
    if died:
        raise WorkerDied(_died_message(died))


@contextmanager
def in_lava(process):
    """Around every call into Lava that compiles, starts or runs the network of `process`, or reads or
    sets its Vars (a protocol of messages with Lava's runtime service that an interrupt midway would
    leave waiting): Ctrl-C waits for the call's end, and a worker that dies ends it at once
    (`worker_watchdog`)."""
    with deferred_interrupt(), worker_watchdog(process):
        yield


def _died_message(died: list[str]) -> str:
    return (f"{died[0] if died else 'a Lava worker'} mid-run (out of memory, a crash or a kill?); every other "
            f"worker was stopped and Lava's shared memory released; no file was left half-written")


# Per Lava process, its forked worker's own memory (the pages it writes, its ports' buffers), and per
# weight what the run holds of it: in our processes (the host program's int64 and float64 copies, the
# worker's) and in Lava's Dense processes (its Var and model arrays besides the program's). Fitted by
# `python bench/memory_peaks.py --lava` with a process per block: NeurTransformer's random:gpt2-small
# and -medium (4.52 and 15.95 GiB: 22.9 and 23.4 bytes per weight past 24 MiB a process; 24 taken); the graded
# method's rows disagree (24.7 and 39.7 bytes per Lava Dense weight), so its rate is the larger.
WORKER_BYTES = 24 << 20
BYTES_PER_WEIGHT = 24
BYTES_PER_DENSE_WEIGHT = 40


def process_total(spiking: SpikingGraph, program: dict, grouping: str = "block") -> int:
    """How many Lava processes stand for the chip's nodes: the groups and a Lava Dense per graded layer."""
    return len(process_groups(spiking, program, grouping)) + sum(isinstance(op, fx.GradedLinear)
                                                                  for op in program.values())


def array_bytes(value) -> int:
    """Bytes of the numpy arrays held in `value` (an integer program: every op's weights in both forms),
    which the host process has allocated already when the program exists."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(map(array_bytes, value.values()))
    return sum(map(array_bytes, vars(value).values())) if hasattr(value, "__dict__") else 0


def lava_peak_bytes(spiking: SpikingGraph, program: dict | None = None, grouping: str = "block") -> int:
    """What a Lava run of the graph takes in all, known before it starts: the host process's program
    (its integer and float64 copies of the weights) and the workers Lava forks from it."""
    program = program if program is not None else fx.integer_program(spiking)
    weights = {name: sum(value.numel() for value in vars(spiking.op(name)).values() if isinstance(value, torch.Tensor))
               for name in program}
    in_dense = sum(n for name, n in weights.items() if isinstance(program[name], fx.GradedLinear))
    return int(process_total(spiking, program, grouping) * WORKER_BYTES
               + (sum(weights.values()) - in_dense) * BYTES_PER_WEIGHT + in_dense * BYTES_PER_DENSE_WEIGHT)


@dataclass
class Speed:
    """How long one phase of a run took: the prompt (pipelined, or token by token) or generation."""
    tokens: int = 0
    steps: int = 0
    lava_seconds: float = 0.0      # inside Lava's run() of the steps
    wall_seconds: float = 0.0      # what a caller waited: host work, Lava, reading the results (compile apart)

    def line(self, what: str) -> str:
        if not self.tokens:
            return f"{what}: none"
        rate = self.steps / self.lava_seconds if self.lava_seconds else 0.0
        return (f"{what}: {self.tokens} tokens in {self.steps} steps ({self.steps / self.tokens:.1f} per token), "
                f"{self.wall_seconds / self.tokens:.2f} s per token wall, Lava's steps "
                f"{self.lava_seconds / self.tokens:.2f} s per token ({rate:.0f} steps/s)")


class LavaModel:
    """A spiking graph built as Lava processes: a prompt run at once, its tokens pipelined through the
    layers (`pipeline=False`: one after another), then generation token by token. `grouping`: a
    Lava process per transformer block ("block") or per on-chip node ("node"), the same values;
    `run_config` gains each group's model in its `exception_proc_model_map`.

    Use as a context manager (Lava's runtime is stopped on exit, also on Ctrl-C):
        with LavaModel(graph) as model:
            logits = model.prefill(prompt_ids, max_new_tokens=4)
            new = model.generate_from(logits[-1], 4)
    """

    def __init__(self, spiking: SpikingGraph, timesteps: int | None = None, placement=None,
                 run_config=None, record: bool = False, pipeline: bool = True, force: bool = False,
                 grouping: str = "block"):
        self.spiking = spiking
        self.timesteps = timesteps or int(spiking.meta.get("options", {}).get("timesteps", 1))
        self.program = fx.integer_program(spiking)
        _check_lava_precision(spiking)
        self.plan = schedule(spiking, self.program, self.timesteps)
        self.interval = self.plan.interval if pipeline else self.plan.period
        self.host_ops = {name: fx.in_float64(spiking.op(name)) for name in self.plan.host_after}
        self.run_config = run_config or simulator_config()
        self.record = record
        self.force = force              # build even where lava_peak_bytes exceeds the memory available
        self.kv_capacity = min((op.kv_capacity for op in self.program.values() if hasattr(op, "kv_capacity")),
                               default=None)
        self.cores = _cores_by_node(placement)
        self.grouping = grouping
        self.groups = process_groups(spiking, self.program, grouping)
        self.processes, self.synapses, self.sources, self.sinks = {}, {}, {}, {}
        self.token_ids: list[int] = []
        self.logits: list[torch.Tensor] = []
        self.host_values: dict[str, list[np.ndarray]] = {}
        self.prompt, self.generation = Speed(), Speed()
        self.compile_seconds = 0.0      # building the processes and Lava's compiler, once
        self.capacity = 0
        self.clock = None
        self._started = False
        self._records = None

    # -- building ---------------------------------------------------------------------------------
    def _build(self, payloads: dict[str, np.ndarray]) -> None:
        """The processes for a run of `capacity` tokens; `payloads`: the prompt's host values per source."""
        spiking, T = self.spiking, self.timesteps
        precision = spiking.quantization.precision if spiking.quantization is not None else None
        self.synapses = {name: synapses(op, fx.message_bits(spiking, spiking.inputs(name)["x"]), name,
                                        pruned=precision is not None and precision.sparsity_of(name) > 0)
                         for name, op in self.program.items() if isinstance(op, fx.GradedLinear)}
        self.sources = {name: HostSource(name=f"host:{name}", prompt=payloads[name], clock=self.clock)
                        for name in payloads}
        wiring = {key: self._group_wiring(nodes) for key, nodes in self.groups.items()}
        for key, (members, inputs, outputs) in wiring.items():
            self.processes[key] = Group(
                name=key, members=members, clock=self.clock, timesteps=T, capacity=self.capacity,
                recording=self.record, cores=self._group_cores(key),
                inputs={port: self._size_of(source) for source, port in inputs.items()}, outputs=outputs)
            model = group_model(key, tuple(inputs.values()), tuple(outputs))
            self.run_config.exception_proc_model_map[self.processes[key]] = model   # Lava's compiler: by instance
        self.members = {m.name: (key, m) for key, (members, _, _) in wiring.items() for m in members}
        for source, port in self.plan.sinks.items():
            self.sinks[source] = HostSink(name=f"host:{source}", size=spiking.op(source).out_features, port=port,
                                          clock=self.clock, timesteps=T, capacity=self.capacity)
            self._sender(source).connect(self.sinks[source].inp)
        for key, (_, inputs, _) in wiring.items():
            for source, port in inputs.items():
                self._sender(source).connect(getattr(self.processes[key], port))
        for name, dense in self.synapses.items():
            self._sender(spiking.inputs(name)["x"]).connect(dense.s_in)
            if isinstance(self.run_config, AbstractLoihiSimRunCfg):      # on hardware the chip runs them
                skipping = IdleSkippingSparseModel if isinstance(dense, LavaSparse) else IdleSkippingDenseModel
                self.run_config.exception_proc_model_map[dense] = skipping

    def _group_cores(self, key: str) -> list[int] | None:
        """The cores the partitioner gave the group's nodes (for hardware), None without a placement."""
        return sorted({core for node in self.groups[key] for core in self.cores.get(node, ())}) or None

    def _size_of(self, source: str) -> int:
        """The width of what `source` sends: a node's out_features, or a Dense's (its neurons')."""
        return self.spiking.op(source.removeprefix(SYNAPSES)).out_features

    def _sender(self, source: str):
        """The OutPort `source` sends on: a node's group port, a host source's, or a Dense's a_out."""
        if source.startswith(SYNAPSES):
            return self.synapses[source.removeprefix(SYNAPSES)].a_out
        if source in self.sources:
            return self.sources[source].out
        key, member = self.members[source]
        return getattr(self.processes[key], member.sends)

    def _group_wiring(self, nodes: list[str]) -> tuple[list[Member], dict[str, str], dict[str, int]]:
        """A group's members, its input ports (by what feeds them: a node or host source outside the
        group, or SYNAPSES + NAME, the Dense before a GradedDense's neurons) and its output ports
        (name -> size), one per member something outside the group reads."""
        spiking, inside = self.spiking, set(nodes)
        inputs: dict[str, str] = {}
        outputs: dict[str, int] = {}
        members, offset = [], 0
        for name in nodes:
            op = self.program[name]
            reads = {}
            for port, source in spiking.inputs(name).items():
                if isinstance(op, fx.GradedLinear):
                    source = SYNAPSES + name
                if source in inside:
                    reads[port] = ("node", source)
                else:
                    reads[port] = ("in", inputs.setdefault(source, f"i{len(inputs)}"))
            read_outside = name in self.plan.sinks or any(
                c in self.program and (c not in inside or isinstance(self.program[c], fx.GradedLinear))
                for c in spiking.graph.successors(name))
            sends = f"o{len(outputs)}" if read_outside else None
            if sends:
                outputs[sends] = spiking.op(name).out_features
            rows = self.timesteps if op.sends_spikes else 1
            members.append(Member(name, op, self.plan.timings[name], spiking.op(name).out_features, reads,
                                  sends, rows, offset))
            offset += rows * spiking.op(name).out_features
        return members, inputs, outputs

    # -- running ----------------------------------------------------------------------------------
    def __enter__(self) -> "LavaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops Lava's runtime (its worker processes) if it was started."""
        if self._started:
            self._started = False
            runtime = self._anchor.runtime
            if runtime is not None and runtime._is_initialized:
                # A runtime compiled but not yet run has workers waiting for their first command: Lava's
                # stop() sends STOP only to a started one, and would then wait on them for ever.
                runtime._is_started = True
            self._anchor.stop()

    @property
    def _anchor(self):
        """Any process: Lava compiles, runs and stops the whole connected network through one."""
        return next(iter(self.processes.values()))

    def _run(self, steps: int, speed: Speed, progress: str | None = None) -> None:
        """Lava runs `steps` more steps (in a few chunks, for a progress bar, when asked)."""
        chunk = max(self.interval, -(-steps // 20)) if progress else steps
        with tqdm(total=steps, desc=progress, unit="step", disable=not progress, leave=False) as bar:
            done = 0
            while done < steps:
                todo = min(chunk, steps - done)
                with in_lava(self._anchor):
                    started = time.perf_counter()
                    self._anchor.run(condition=RunSteps(num_steps=todo))
                    speed.lava_seconds += time.perf_counter() - started
                done += todo
                bar.update(todo)
        speed.steps += steps

    def _host_before(self, positions: slice) -> dict[str, torch.Tensor]:
        """The host nodes before the chip on every token fed so far, kept at `positions`."""
        ids = torch.tensor([self.token_ids])
        values: dict[str, torch.Tensor] = {}
        for name in self.plan.host_before:
            inputs = {p: values[s] for p, s in self.spiking.inputs(name).items()}
            values[name] = execute_node(self.spiking.op(name), inputs, ids, self.timesteps)
        return {name: value[:, positions] for name, value in values.items()}

    def _payloads(self, before: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """What each host source sends the chip: its host node's values as payloads [tokens, N]."""
        chip_sources = [n for n in self.plan.host_before if any(s in self.program for s in
                                                                 self.spiking.graph.successors(n))]
        for name in chip_sources:
            self.host_values.setdefault(name, []).append(before[name][0].numpy())
        return {name: fx.to_payload(before[name][0].double().numpy()).astype(np.int32) for name in chip_sources}

    def _host_after(self, before: dict[str, torch.Tensor], tokens: slice) -> torch.Tensor:
        """Logits [tokens, vocab] from what the sinks received for `tokens` (the latest token alone: read
        from the sinks' `last`, a Var of one token)."""
        values = dict(before)
        latest = tokens.stop - tokens.start == 1 and tokens.stop == len(self.token_ids)
        for source, sink in self.sinks.items():
            with in_lava(self._anchor):
                received = sink.last.get()[None] if latest else sink.payloads.get()[tokens]
            received = received.astype(np.int64)[None]
            values[source] = fx.to_host(self.spiking.op(source), received, self.timesteps)
        ids = torch.tensor([self.token_ids])[:, tokens]
        for name in self.plan.host_after:
            inputs = {p: values[s] for p, s in self.spiking.inputs(name).items()}
            values[name] = execute_node(self.host_ops[name], inputs, ids, self.timesteps)
        return values[self.spiking.meta["logits_node"]].float()[0]

    def _check_capacity(self, tokens: int) -> None:
        if self.kv_capacity is not None and tokens > self.kv_capacity:
            raise UsageError(f"the sequence is longer than the KV cache ({self.kv_capacity} tokens, the model's "
                             f"context); use a shorter prompt or fewer new tokens")

    def prefill(self, token_ids: list[int], max_new_tokens: int = 0, progress: bool = True) -> torch.Tensor:
        """Builds the processes for the prompt and `max_new_tokens` more, runs the whole prompt in one
        go (its tokens entering every `interval` steps) and returns its logits [len, vocab]."""
        if self._started:
            raise UsageError("this Lava model already ran its prompt; feed further tokens one at a time")
        self._check_capacity(len(token_ids) + max_new_tokens)
        check_memory(lava_peak_bytes(self.spiking, self.program, self.grouping) - array_bytes(self.program),
                     f"building these {process_total(self.spiking, self.program, self.grouping)} processes in Lava",
                     self.force)
        wall = time.perf_counter()
        self.token_ids = [int(t) for t in token_ids]
        self.capacity = len(token_ids) + max_new_tokens
        self.clock = TokenClock(len(token_ids), self.interval, self.plan.period)
        before = self._host_before(slice(None))
        building = time.perf_counter()       # set-up once per model, like Lava's compiler: not a token's time
        self._build(self._payloads(before))
        if progress:
            log.info(f"Lava: compiling {len(self.processes)} processes and starting their workers")
        with in_lava(self._anchor), one_blas_thread():
            self._started = True
            self._anchor.create_runtime(run_cfg=self.run_config)
        self.compile_seconds = time.perf_counter() - building
        self._run(self.clock.entry(len(token_ids)), self.prompt, "Lava prompt" if progress else None)
        logits = self._host_after(before, slice(0, len(token_ids)))
        self.logits += list(logits)
        self.prompt.tokens = len(token_ids)
        self.prompt.wall_seconds += time.perf_counter() - wall - self.compile_seconds
        return logits

    def step_token(self, token_id: int) -> torch.Tensor:
        """Feeds one more token after the prompt (its own period of steps) and returns its logits [vocab]."""
        if not self._started:
            return self.prefill([token_id], progress=False)[0]
        if len(self.token_ids) >= self.capacity:
            raise UsageError(f"this Lava model was built for {self.capacity} tokens; give prefill the tokens "
                             f"to generate (max_new_tokens)")
        wall = time.perf_counter()
        self.token_ids.append(int(token_id))
        position = len(self.token_ids) - 1
        before = self._host_before(slice(position, position + 1))
        for name, payload in self._payloads(before).items():
            with in_lava(self._anchor):
                self.sources[name].next.set(payload[0])
        self._run(self.plan.period, self.generation)
        logits = self._host_after(before, slice(position, position + 1))[0]
        self.logits.append(logits)
        self.generation.tokens += 1
        self.generation.wall_seconds += time.perf_counter() - wall
        return logits

    def feed(self, token_ids: list[int], progress: bool = True) -> torch.Tensor:
        """Logits [len, vocab]: the prompt run at once if nothing was fed yet, else one token at a time."""
        if not self._started:
            return self.prefill(token_ids, progress=progress)
        return torch.stack([self.step_token(t) for t in token_ids])

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
        ([1, tokens, T, N] spikes, [1, tokens, N] payloads and host inputs), so `sim.energy.count`
        reads this run's own spikes; read from the processes once. Needs record=True."""
        if not self.record or not self._started:
            raise UsageError("this Lava run kept no records; build LavaModel(..., record=True) and run it")
        if self._records is None or len(next(iter(self._records.values()))[0]) != len(self.token_ids):
            tokens = len(self.token_ids)
            self._records = {}
            with in_lava(self._anchor):
                records = {key: process.record.get()[:tokens].astype(np.int64)
                           for key, process in self.processes.items()}
            for name, (key, m) in self.members.items():
                sent = records[key][:, m.record_offset:m.record_offset + m.record_rows * m.out_size]
                sent = sent.reshape(1, tokens, m.record_rows, m.out_size)
                self._records[name] = sent if m.op.sends_spikes else sent[:, :, 0]
            for name, rows in self.host_values.items():
                self._records[name] = np.concatenate(rows)[None]
        return self._records

    def compare(self, twin) -> list[str]:
        """Nodes (and "logits") where this run differs from the reference's fixed-point run of the
        same tokens (`sim.fixed_point.run(..., keep_values=True)` on [1, tokens]); needs record=True."""
        recorded = self.recorded_values()
        differing = [name for name in self.program if not np.array_equal(recorded[name], twin.values[name])]
        if not torch.equal(torch.stack(self.logits), twin.logits[0]):
            differing.append("logits")
        return differing

    @property
    def process_count(self) -> int:
        """Lava processes standing for the chip's nodes: the groups and Lava's Dense processes."""
        return len(self.processes) + len(self.synapses)

    @property
    def steps_run(self) -> int:
        return self.prompt.steps + self.generation.steps

    def speed(self) -> str:
        """The prompt's and the generation's speed, apart (what pipelining the prompt buys)."""
        mode = f"pipelined, a token every {self.interval} steps" if self.interval < self.plan.period \
            else "token by token"
        return (f"{self.prompt.line(f'prompt ({mode})')}; {self.generation.line('generation')}; "
                f"build and compile {self.compile_seconds:.1f} s")


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
        with in_lava(net), one_blas_thread():
            net.run(condition=RunSteps(num_steps=steps), run_cfg=run_config or simulator_config())
            messages = [sink.data.get() for sink in sinks]
    finally:
        net.stop()
    return messages if every_layer else messages[0]
