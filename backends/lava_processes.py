"""Lava processes for what lava-dl netx has no layer for, with fixed-point PyLoihiProcessModels.

One process per on-chip node of the spiking graph; a GradedDense node (the
graded method) is two: Lava's own `lava.proc.dense.process.Dense` holding its
8-bit weights (built by `backends.lava_sim`) and a `GradedNeuron` here. Their
arithmetic is the integer ops of `sim.fixed_point`, called as they are (the
reference simulator's fixed-point mode executes the same ops on whole
sequences); what these models add is Lava's execution: one message per port
per step, every token in flight at once (a node works on token i at its
offset from the token's entry, `sim.schedule.TokenClock`), delay lines that
hold every message still in flight between nodes of different depths, and the
attention's keys and values of earlier tokens kept in its `kv_cache` Var,
written as the tokens pass.

Messages are int32: spikes as integers, graded values as 24-bit payloads. A
population sends zeros outside its windows; a graded node sends its value at
the one step it computes it; a consumer keeps what arrived when its own step
comes. What each node sent for each token is kept in its `record` Var for the
whole run (when recording), read once at the end.
"""

from collections import deque

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
from nxcompile.sim.schedule import PortTiming, Timing, TokenClock

MESSAGE = np.int32


class _Layer(AbstractProcess):
    """An on-chip node: its integer op (one of `sim.fixed_point`'s), its timing, the token clock.
    `record[token]` holds what it sent for each token (T rows of spikes, or one row with its graded
    payload) when `recording`."""

    def __init__(self, *, name: str, op, timing: Timing, clock: TokenClock, timesteps: int,
                 in_sizes: dict[str, int], out_size: int, record_rows: int, capacity: int, recording: bool,
                 cores: list[int] | None = None):
        super().__init__(name=name, op=op, timing=timing, clock=clock, timesteps=timesteps, recording=recording,
                         cores=cores)
        for port, size in in_sizes.items():
            setattr(self, port, InPort(shape=(size,)))
        self.out = OutPort(shape=(out_size,))
        shape = (capacity if recording else 1, record_rows, out_size)
        self.record = Var(shape=shape, init=np.zeros(shape, dtype=MESSAGE))


class Population(_Layer):
    """Encode, Dense (with neurons) or a readout: one input `x`."""


class Norm(_Layer):
    """LayerNorm on graded payloads (or on a decoded spike window): one input `x`."""


class ResidualAdd(_Layer):
    """The residual connection, graded or into a spiking population: inputs `a`, `b`."""


class SpikingSelfAttention(_Layer):
    """SSA with its KV cache in synaptic memory: inputs `q`, `k`, `v`.
    kv_cache[0 | 1, token, step] holds the key | value spikes each token sent."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        op = kwargs["op"]
        shape = (2, kwargs["capacity"], kwargs["timesteps"], op.n_head * op.head_dim)
        self.kv_cache = Var(shape=shape, init=np.zeros(shape, dtype=np.int8))


class GradedNeuron(_Layer):
    """The neurons of a GradedDense: input `x` is what Lava's Dense process sends (sum m x >> s); they
    add the bias, apply the activation and send the result as one graded spike per token."""


class SoftmaxAttention(_Layer):
    """Softmax attention with its KV cache in synaptic memory: inputs `q`, `k`, `v` (graded).
    kv_cache[0 | 1, token] holds the key | value payloads each token sent."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        op = kwargs["op"]
        shape = (2, kwargs["capacity"], op.n_head * op.head_dim)
        self.kv_cache = Var(shape=shape, init=np.zeros(shape, dtype=np.int8))


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
    spikes summed over the token's window of T steps."""

    def __init__(self, *, name: str, size: int, port: PortTiming, clock: TokenClock, timesteps: int,
                 capacity: int):
        super().__init__(name=name, port=port, clock=clock, timesteps=timesteps)
        self.payloads = Var(shape=(capacity, size), init=np.zeros((capacity, size), dtype=MESSAGE))
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

    def run_spk(self) -> None:
        message = self.inp.recv()
        port: PortTiming = self.proc_params["port"]
        token, phase = self.proc_params["clock"].slot(self.time_step - 1 - port.first)
        if phase == 0:
            self.payloads[token] = message
        elif port.spikes and 0 < phase < self.proc_params["timesteps"]:
            self.payloads[token] += message.astype(MESSAGE)


class _LayerModel(PyLoihiProcessModel):
    """Step logic shared by every on-chip node; subclasses name their input ports."""
    PORTS: tuple[str, ...] = ()
    out: PyOutPort = _message_port(PyOutPort.VEC_DENSE)
    record: np.ndarray = _message_var()

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.op = proc_params["op"]
        self.timing: Timing = proc_params["timing"]
        self.clock: TokenClock = proc_params["clock"]
        self.steps: int = proc_params["timesteps"]
        self.recording: bool = proc_params["recording"]
        self.lines = {port: deque(maxlen=t.delay + 1) for port, t in self.timing.ports.items() if t.delay}
        self.sums: dict[str, np.ndarray] = {}
        self.latched: dict[str, np.ndarray] = {}
        self.membrane = self.accumulated = None
        self.silent = None

    def run_spk(self) -> None:
        step = self.time_step - 1
        messages = {port: getattr(self, port).recv().astype(np.int64) for port in self.PORTS}
        for port, line in self.lines.items():
            line.append(messages[port])
        if self.silent is None:
            self.silent = np.zeros(self.out.shape, dtype=np.int64)
        sent = self._window_step(step, messages) if self.op.windowed else self._graded_step(step, messages)
        self.out.send(sent)

    def _arrived(self, port: str, messages: dict[str, np.ndarray]) -> np.ndarray:
        """This port's message from `delay` steps ago (its delay line), or this step's."""
        line = self.lines.get(port)
        if line is None:
            return messages[port]
        return line[0] if len(line) == line.maxlen else np.zeros_like(messages[port])

    def _keep(self, token: int, row: int, sent: np.ndarray) -> None:
        if self.recording:
            self.record[token, row] = sent

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
        x = {port: self._arrived(port, messages) for port in self.PORTS}
        readout = not self.op.sends_spikes
        if tau == 0:
            self.latched = {port: x[port] for port, t in self.timing.ports.items() if not t.spikes}
            self.accumulated = 0
            self.membrane = None if readout else self.neuron(token).reset(self.out.shape)
        current = self.current(tau, token, x | self.latched)
        if readout:
            self.accumulated = self.accumulated + current
            if tau < self.steps - 1:
                return self.silent
            value = self.op.payload(self.accumulated, self.steps)
            self._keep(token, 0, value)
            return value
        spikes, self.membrane = self.neuron(token).step(self.membrane, current)
        self._keep(token, tau, spikes)
        return spikes

    def neuron(self, token: int):
        """The population's dynamics for this token."""
        return self.op.neuron

    def current(self, tau: int, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """State-unit input current of this step."""
        return self.op.current(x)


def _model(proc_cls, ports: tuple[str, ...], base=_LayerModel):
    """The fixed-point model class of one process class, with its input ports declared."""
    annotations = {port: PyInPort for port in ports}
    attrs = {port: _message_port(PyInPort.VEC_DENSE) for port in ports}
    cls = type(f"Py{proc_cls.__name__}Model", (base,),
               {"PORTS": ports, "__annotations__": annotations, "__module__": __name__, **attrs})
    return _fixed_point_model(proc_cls)(cls)


class _AttentionModel(_LayerModel):
    kv_cache: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)

    def neuron(self, token: int):
        return self.op.neuron_at(token)

    def current(self, tau: int, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """Writes this token's K, V spikes into the cache, then attends over every cached token."""
        self.kv_cache[0, token, tau] = x["k"]
        self.kv_cache[1, token, tau] = x["v"]
        return self.op.current(x["q"][None], self.kv_cache[0, :token + 1, tau], self.kv_cache[1, :token + 1, tau])[0]


class _SoftmaxAttentionModel(_LayerModel):
    kv_cache: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=8)

    def graded_value(self, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """Writes this token's key and value into the cache, then attends over every cached token."""
        self.kv_cache[0, token] = x["k"]
        self.kv_cache[1, token] = x["v"]
        return self.op.attend(x["q"][None], self.kv_cache[0, :token + 1], self.kv_cache[1, :token + 1])[0]


class _GradedNeuronModel(_LayerModel):
    def graded_value(self, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """The neurons' message from what their synapses (Lava's Dense) accumulated."""
        return self.op.neuron_value(x["x"])


PyPopulationModel = _model(Population, ("x",))
PyGradedNeuronModel = _model(GradedNeuron, ("x",), base=_GradedNeuronModel)
PySoftmaxAttentionModel = _model(SoftmaxAttention, ("q", "k", "v"), base=_SoftmaxAttentionModel)
PyNormModel = _model(Norm, ("x",))
PyResidualAddModel = _model(ResidualAdd, ("a", "b"))
PySpikingSelfAttentionModel = _model(SpikingSelfAttention, ("q", "k", "v"), base=_AttentionModel)
