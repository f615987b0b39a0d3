"""Lava processes for what lava-dl netx has no layer for, with fixed-point PyLoihiProcessModels.

The on-chip nodes of the spiking graph run in `Group` processes, each stepping
one or more nodes (by default every node of one transformer block) in the
graph's order within each Lava step; a GradedDense node's synapses are Lava's
own `lava.proc.dense.process.Dense` (built by `backends.lava_sim`), its neurons
a node of a group. A connection in Lava's simulator takes no step (a receiver
gets what its sender sent in the same step), so a message passed between two
nodes inside a group is the message Lava would have carried between two
processes: grouping changes how many processes Lava synchronises every step,
not what any node computes or when. The nodes' arithmetic is the integer ops of
`sim.fixed_point`, called as they are (the reference simulator's fixed-point
mode executes the same ops on whole sequences); what these models add is Lava's
execution: one message per port per step, every token in flight at once (a node
works on token i at its offset from the token's entry, `sim.schedule.TokenClock`),
delay lines that hold every message still in flight between nodes of different
depths, and each attention's keys and values of earlier tokens kept in its KV
cache (synaptic memory on the chip), written as the tokens pass.

Messages are int32: spikes as integers, graded values as 24-bit payloads. A
population sends zeros outside its windows; a graded node sends its value at
the one step it computes it; a consumer keeps what arrived when its own step
comes. What each node sent for each token is kept in its group's `record` Var
for the whole run (when recording), read once at the end.
"""

from collections import deque
from dataclasses import dataclass

import numpy as np

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes, before Lava is imported)
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from nxcompile.compiler.graph import GRADED_BITS
from nxcompile.sim import fixed_point as fx
from nxcompile.sim.schedule import PortTiming, Timing, TokenClock

MESSAGE = np.int32


class NodeStep:
    """One on-chip node's work in each Lava step: its integer op (one of `sim.fixed_point`'s), its
    timing, the token clock, and what it keeps between steps (delay lines, a window's membrane or
    sums). `record[token]` (a view into its group's record Var, or None) gets what it sent for each
    token, row after row: T rows of spikes, or one row with its graded payload."""

    def __init__(self, op, timing: Timing, clock: TokenClock, timesteps: int, out_size: int,
                 capacity: int, record: np.ndarray | None):
        self.op, self.timing, self.clock, self.steps = op, timing, clock, timesteps
        self.record = record
        self.lines = {port: deque(maxlen=t.delay + 1) for port, t in timing.ports.items() if t.delay}
        self.sums: dict[str, np.ndarray] = {}
        self.latched: dict[str, np.ndarray] = {}
        self.membrane = self.accumulated = self.steady = None
        self.silent = np.zeros(out_size, dtype=np.int64)

    def step(self, step: int, messages: dict[str, np.ndarray]) -> np.ndarray:
        """What the node sends in `step` (counted from 0), given what reached its ports in it."""
        for port, line in self.lines.items():
            line.append(messages[port])
        return self._window_step(step, messages) if self.op.windowed else self._graded_step(step, messages)

    def _arrived(self, port: str, messages: dict[str, np.ndarray]) -> np.ndarray:
        """This port's message from `delay` steps ago (its delay line), or this step's."""
        line = self.lines.get(port)
        if line is None:
            return messages[port]
        return line[0] if len(line) == line.maxlen else np.zeros_like(messages[port])

    def _keep(self, token: int, row: int, sent: np.ndarray) -> None:
        if self.record is not None:
            width = self.silent.size
            self.record[token, row * width:(row + 1) * width] = sent

    def _graded_step(self, step: int, messages: dict[str, np.ndarray]) -> np.ndarray:
        """Sum spike windows as they pass; at the node's step of a token, compute and send the value."""
        for port, t in self.timing.ports.items():
            if t.spikes:
                token, phase = self.clock.slot(step - t.first)
                if 0 <= phase < self.steps:
                    self.sums[port] = messages[port] + (self.sums[port] if phase else 0)
        token, phase = self.clock.slot(step - self.timing.start)
        if phase != 0:
            return self.silent
        x = {port: self.sums[port] if t.spikes else self._arrived(port, messages)
             for port, t in self.timing.ports.items()}
        value = self.graded_value(token, x)
        self._keep(token, 0, value)
        return value

    def graded_value(self, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """The value a graded node computes once per token from its inputs (a spike input: its window's sum)."""
        return self.op.value(x, self.steps)

    def _window_step(self, step: int, messages: dict[str, np.ndarray]) -> np.ndarray:
        """Step `tau` of a token's window: integrate and fire (or accumulate, for a readout). Graded
        inputs arrive once, at the window's first step, and drive every step of it."""
        token, tau = self.clock.slot(step - self.timing.start)
        if not 0 <= tau < self.steps:
            return self.silent
        x = {port: self._arrived(port, messages) for port in self.timing.ports}
        if tau == 0:
            self.latched = {port: x[port] for port, t in self.timing.ports.items() if not t.spikes}
        if not self.op.sends_spikes:
            return self._readout_step(tau, token, x["x"])
        if tau == 0:
            self.membrane = self.neuron(token).reset(self.silent.shape)
        current = self.current(tau, token, x | self.latched)
        spikes, self.membrane = self.neuron(token).step(self.membrane, current)
        self._keep(token, tau, spikes)
        return spikes

    def _readout_step(self, tau: int, token: int, x: np.ndarray) -> np.ndarray:
        """A readout counts its input spikes over the window (a graded input is latched) and turns
        the window's summed current into its payload at the last step."""
        spikes = "x" in self.op.spike_ports
        if spikes:
            self.accumulated = x if tau == 0 else self.accumulated + x
        if tau < self.steps - 1:
            return self.silent
        window_input = self.accumulated if spikes else self.latched["x"]
        value = self.op.payload(self.op.window_current(window_input, self.steps), self.steps)
        self._keep(token, 0, value)
        return value

    def neuron(self, token: int):
        """The population's dynamics for this token."""
        return self.op.neuron

    def current(self, tau: int, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """State-unit input current of this step: the window's steady part (graded inputs, bias),
        computed at its first step, and this step's spikes."""
        if tau == 0:
            self.steady = self.op.steady_current(x)
        return self.steady + self.op.spike_current(x)


class SpikingAttentionStep(NodeStep):
    """SSA with its KV cache: kv_cache[0 | 1, token, step] holds the key | value spikes each token sent."""

    def __init__(self, op, timing, clock, timesteps, out_size, capacity, record):
        super().__init__(op, timing, clock, timesteps, out_size, capacity, record)
        self.kv_cache = np.zeros((2, capacity, timesteps, op.n_head * op.head_dim), dtype=np.int8)

    def neuron(self, token: int):
        return self.op.neuron_at(token)

    def current(self, tau: int, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """Writes this token's K, V spikes into the cache, then attends over every cached token."""
        self.kv_cache[0, token, tau] = x["k"]
        self.kv_cache[1, token, tau] = x["v"]
        return self.op.current(x["q"][None], self.kv_cache[0, :token + 1, tau], self.kv_cache[1, :token + 1, tau])[0]


class SoftmaxAttentionStep(NodeStep):
    """Softmax attention on graded values with its KV cache: kv_cache[0 | 1, token] holds the key |
    value payloads each token sent."""

    def __init__(self, op, timing, clock, timesteps, out_size, capacity, record):
        super().__init__(op, timing, clock, timesteps, out_size, capacity, record)
        self.kv_cache = np.zeros((2, capacity, op.n_head * op.head_dim), dtype=np.int8)

    def graded_value(self, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """Writes this token's key and value into the cache, then attends over every cached token."""
        self.kv_cache[0, token] = x["k"]
        self.kv_cache[1, token] = x["v"]
        return self.op.attend(x["q"][None], self.kv_cache[0, :token + 1], self.kv_cache[1, :token + 1])[0]


class GradedNeuronStep(NodeStep):
    """The neurons of a GradedDense: input `x` is what Lava's Dense process sends (sum m x >> s); they
    add the bias, apply the activation and send the result as one graded spike per token."""

    def graded_value(self, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        return self.op.neuron_value(x["x"])


STEP_OF = {fx.SpikingAttention: SpikingAttentionStep, fx.SoftmaxAttention: SoftmaxAttentionStep,
           fx.GradedLinear: GradedNeuronStep}


@dataclass(frozen=True)
class Member:
    """A node of a group: where each of its ports reads from (`("in", port)` a port of the group,
    `("node", name)` a node before it in the same group), the group port it sends on (None when
    nothing outside the group reads it) and where its rows sit in the group's record (each token's
    `record_rows` rows of `out_size`, one after another, from `record_offset`)."""
    name: str
    op: object
    timing: Timing
    out_size: int
    reads: dict[str, tuple[str, str]]
    sends: str | None
    record_rows: int
    record_offset: int


class Group(AbstractProcess):
    """On-chip nodes stepped in one Lava process, in the graph's order. Its ports are those of
    `inputs` and `outputs` (name -> size); `record[token, offset:offset + rows * size]` holds what
    each member sent (when `recording`), packed: Lava reads a Var one element per message, so no
    element is padding. Its model is made for its ports (`group_model`)."""

    def __init__(self, *, name: str, members: list[Member], inputs: dict[str, int], outputs: dict[str, int],
                 clock: TokenClock, timesteps: int, capacity: int, recording: bool,
                 cores: list[int] | None = None):
        super().__init__(name=name, members=members, clock=clock, timesteps=timesteps, capacity=capacity,
                         recording=recording, cores=cores)
        for port, size in inputs.items():
            setattr(self, port, InPort(shape=(size,)))
        for port, size in outputs.items():
            setattr(self, port, OutPort(shape=(size,)))
        shape = (capacity if recording else 1, sum(m.record_rows * m.out_size for m in members))
        self.record = Var(shape=shape, init=np.zeros(shape, dtype=MESSAGE))


class HostSource(AbstractProcess):
    """The host's values for the chip (a token's embedding), sent as each token enters: the prompt's
    tokens from `prompt` (known before the run), a generated token from `next`, which the host sets
    before the token's run."""

    def __init__(self, *, name: str, prompt: np.ndarray, clock: TokenClock):
        super().__init__(name=name, clock=clock)
        size = prompt.shape[1]
        self.prompt = Var(shape=prompt.shape, init=prompt.astype(MESSAGE))
        self.next = Var(shape=(size,), init=np.zeros(size, dtype=MESSAGE))
        self.out = OutPort(shape=(size,))


class HostSink(AbstractProcess):
    """What a chip node sends toward the host, per token (`payloads[token]`): its graded value, or its
    spikes summed over the token's window of T steps; `last` the latest token's alone (Lava reads a
    Var one element per message, so a generated token reads that, not every token's)."""

    def __init__(self, *, name: str, size: int, port: PortTiming, clock: TokenClock, timesteps: int,
                 capacity: int):
        super().__init__(name=name, port=port, clock=clock, timesteps=timesteps)
        self.payloads = Var(shape=(capacity, size), init=np.zeros((capacity, size), dtype=MESSAGE))
        self.last = Var(shape=(size,), init=np.zeros(size, dtype=MESSAGE))
        self.inp = InPort(shape=(size,))


def _message_port(direction):
    return LavaPyType(direction, MESSAGE, precision=GRADED_BITS)


def _message_var():
    return LavaPyType(np.ndarray, MESSAGE, precision=GRADED_BITS)


def _fixed_point_model(proc_cls):
    """Registers a model class as `proc_cls`'s fixed-point CPU model (what Loihi2SimCfg selects)."""
    return lambda cls: implements(proc=proc_cls, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(cls)))


@_fixed_point_model(HostSource)
class PyHostSourceModel(PyLoihiProcessModel):
    out: PyOutPort = _message_port(PyOutPort.VEC_DENSE)
    prompt: np.ndarray = _message_var()
    next: np.ndarray = _message_var()

    def run_spk(self) -> None:
        clock: TokenClock = self.proc_params["clock"]
        token, phase = clock.slot(self.time_step - 1)
        if phase != 0:
            self.out.send(np.zeros(self.out.shape, dtype=MESSAGE))
        else:
            self.out.send(self.prompt[token] if token < clock.prompt else self.next)


@_fixed_point_model(HostSink)
class PyHostSinkModel(PyLoihiProcessModel):
    inp: PyInPort = _message_port(PyInPort.VEC_DENSE)
    payloads: np.ndarray = _message_var()
    last: np.ndarray = _message_var()

    def run_spk(self) -> None:
        message = self.inp.recv()
        port: PortTiming = self.proc_params["port"]
        token, phase = self.proc_params["clock"].slot(self.time_step - 1 - port.first)
        if phase == 0:
            self.payloads[token] = message
        elif port.spikes and 0 < phase < self.proc_params["timesteps"]:
            self.payloads[token] += message.astype(MESSAGE)
        else:
            return
        self.last[:] = self.payloads[token]


class _GroupModel(PyLoihiProcessModel):
    """Steps a group's nodes: receives every input port, runs each member on what reached it (a
    member before it in the group passes its message on directly, as Lava's channel would in the
    same step), sends what leaves the group."""
    INPUTS: tuple[str, ...] = ()
    record: np.ndarray = _message_var()

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.members: list[Member] = proc_params["members"]
        self.nodes: list[NodeStep] | None = None       # built at the first step, on the record Var's array

    def _build_nodes(self) -> list[NodeStep]:
        params = self.proc_params
        recording = params["recording"]
        return [STEP_OF.get(type(m.op), NodeStep)(
            m.op, m.timing, params["clock"], params["timesteps"], m.out_size, params["capacity"],
            self.record[:, m.record_offset:m.record_offset + m.record_rows * m.out_size] if recording else None)
            for m in self.members]

    def run_spk(self) -> None:
        if self.nodes is None:
            self.nodes = self._build_nodes()
        step = self.time_step - 1
        received = self._receive()
        sent: dict[str, np.ndarray] = {}
        for member, node in zip(self.members, self.nodes):
            messages = {port: received[source] if kind == "in" else sent[source]
                        for port, (kind, source) in member.reads.items()}
            sent[member.name] = node.step(step, messages)
            if member.sends is not None:
                self._send(member.sends, sent[member.name])

    def _receive(self) -> dict[str, np.ndarray]:
        return {port: getattr(self, port).recv().astype(np.int64) for port in self.INPUTS}

    def _send(self, port: str, message: np.ndarray) -> None:
        getattr(self, port).send(message)


def group_model(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]):
    """The fixed-point model of one Group with these ports declared (Lava builds a model's ports from
    its class's attributes, so each port layout is a class of its own); the caller maps the Group
    to it in the run config's `exception_proc_model_map`."""
    annotations = {port: PyInPort for port in inputs} | {port: PyOutPort for port in outputs}
    attrs = {port: _message_port(PyInPort.VEC_DENSE) for port in inputs}
    attrs |= {port: _message_port(PyOutPort.VEC_DENSE) for port in outputs}
    model = type(f"PyGroup_{name}_Model", (_GroupModel,),
                 {"INPUTS": inputs, "__annotations__": annotations, "__module__": __name__,
                  **attrs})
    return _fixed_point_model(Group)(model)
