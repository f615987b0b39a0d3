"""Lava processes for what lava-dl netx has no layer for, with fixed-point PyLoihiProcessModels.

One process per on-chip node of the spiking graph; a GradedDense node (the
graded method) is two: Lava's own `lava.proc.dense.process.Dense` holding its
8-bit weights (built by `backends.lava_sim`) and a `GradedNeuron` here. Their arithmetic is the
integer ops of `sim.fixed_point`, called as they are (the reference simulator's
fixed-point mode executes the same ops on whole sequences); what these models add
is Lava's execution: one message per port per step, one token at a time, a
schedule that says at which step of the token's period each node integrates
(`sim.schedule.Timing`), delay lines where spikes of different depths meet, and
the attention's keys and values of earlier tokens kept in its `kv_cache` Var,
written as the tokens arrive.

Messages are int32: spikes as integers, graded values as 24-bit payloads.
A population sends zeros outside its window; a graded node holds its last
value on its port, so a consumer reads it whenever its own schedule says.
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

from nxcompile.sim import fixed_point as fx
from nxcompile.sim.schedule import Timing

MESSAGE = np.int32


class _Layer(AbstractProcess):
    """An on-chip node: its integer op (one of `sim.fixed_point`'s), timing and period.
    `record` holds what it sent in the current token: T rows of spikes, or one
    row with its graded payload."""

    def __init__(self, *, name: str, op, timing: Timing, period: int, timesteps: int,
                 in_sizes: dict[str, int], out_size: int, record_rows: int, cores: list[int] | None = None):
        super().__init__(name=name, op=op, timing=timing, period=period, timesteps=timesteps, cores=cores)
        for port, size in in_sizes.items():
            setattr(self, port, InPort(shape=(size,)))
        self.out = OutPort(shape=(out_size,))
        self.record = Var(shape=(record_rows, out_size), init=np.zeros((record_rows, out_size), dtype=MESSAGE))


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
        op, steps = kwargs["op"], kwargs["timesteps"]
        shape = (2, op.kv_capacity, steps, op.n_head * op.head_dim)
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
        shape = (2, op.kv_capacity, op.n_head * op.head_dim)
        self.kv_cache = Var(shape=shape, init=np.zeros(shape, dtype=np.int8))


class HostSource(AbstractProcess):
    """A graded value from the host (the embedding of the current token), held on `out`."""

    def __init__(self, *, name: str, size: int):
        super().__init__(name=name)
        self.payload = Var(shape=(size,), init=np.zeros(size, dtype=MESSAGE))
        self.out = OutPort(shape=(size,))


class HostSink(AbstractProcess):
    """What a chip node sent toward the host in the current token (read after each token): its
    last graded value, or, given the node's `window` (first step, steps, period), its spikes
    summed over that window."""

    def __init__(self, *, name: str, size: int, window: tuple[int, int, int] | None = None):
        super().__init__(name=name, window=window)
        self.payload = Var(shape=(size,), init=np.zeros(size, dtype=MESSAGE))
        self.inp = InPort(shape=(size,))


def _message_port(direction):
    return LavaPyType(direction, MESSAGE, precision=fx.GRADED_BITS)


def _message_var():
    return LavaPyType(np.ndarray, MESSAGE, precision=fx.GRADED_BITS)


def _fixed_point_model(proc_cls):
    """Registers a model class as `proc_cls`'s fixed-point CPU model (what Loihi2SimCfg selects)."""
    return lambda cls: implements(proc=proc_cls, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(cls)))


@_fixed_point_model(HostSource)
class PyHostSourceModel(PyLoihiProcessModel):
    out: PyOutPort = _message_port(PyOutPort.VEC_DENSE)
    payload: np.ndarray = _message_var()

    def run_spk(self) -> None:
        self.out.send(self.payload)


@_fixed_point_model(HostSink)
class PyHostSinkModel(PyLoihiProcessModel):
    inp: PyInPort = _message_port(PyInPort.VEC_DENSE)
    payload: np.ndarray = _message_var()

    def run_spk(self) -> None:
        message = self.inp.recv()
        window = self.proc_params["window"]
        if window is None:
            self.payload[:] = message
            return
        start, steps, period = window
        tau = (self.time_step - 1) % period - start
        if tau == 0:
            self.payload[:] = message
        elif 0 < tau < steps:
            self.payload += message.astype(MESSAGE)


class _LayerModel(PyLoihiProcessModel):
    """Step logic shared by every on-chip node; subclasses name their input ports."""
    PORTS: tuple[str, ...] = ()
    out: PyOutPort = _message_port(PyOutPort.VEC_DENSE)
    record: np.ndarray = _message_var()

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.op = proc_params["op"]
        self.timing: Timing = proc_params["timing"]
        self.period: int = proc_params["period"]
        self.steps: int = proc_params["timesteps"]
        self.lines = {port: deque(maxlen=t.delay + 1) for port, t in self.timing.ports.items() if t.spikes}
        self.sums: dict[str, np.ndarray] = {}
        self.membrane = self.accumulated = None
        self.held = None

    def run_spk(self) -> None:
        local = (self.time_step - 1) % self.period
        token = (self.time_step - 1) // self.period
        messages = {port: getattr(self, port).recv().astype(np.int64) for port in self.PORTS}
        for port, line in self.lines.items():
            line.append(messages[port])
        if not self.op.windowed:
            self.out.send(self._graded_step(local, token, messages))
        else:
            self.out.send(self._window_step(local - self.timing.start, token, messages))

    def _graded_step(self, local: int, token: int, messages: dict[str, np.ndarray]) -> np.ndarray:
        """Sum spike windows as they pass; at the node's step, compute and hold the value."""
        for port, t in self.timing.ports.items():
            if t.spikes and 0 <= local - t.window_start < self.steps:
                self.sums[port] = messages[port] + (self.sums[port] if local > t.window_start else 0)
        if local == self.timing.start:
            x = {port: self.sums[port] if t.spikes else messages[port] for port, t in self.timing.ports.items()}
            self.held = self.graded_value(token, x)
            self.record[0] = self.held
        return self._held()

    def graded_value(self, token: int, x: dict[str, np.ndarray]) -> np.ndarray:
        """The value a graded node computes once per token from its inputs (a spike input: its window's sum)."""
        return self.op.value(x, self.steps)

    def _held(self) -> np.ndarray:
        """The graded value this node holds on its port (zeros before its first)."""
        return self.held if self.held is not None else np.zeros(self.out.shape, dtype=np.int64)

    def _input(self, port: str, messages: dict[str, np.ndarray]) -> np.ndarray:
        """This step's message on `port`: the held value, or the spikes `delay` steps old."""
        line = self.lines.get(port)
        if line is None:
            return messages[port]
        return line[0] if len(line) == line.maxlen else np.zeros_like(messages[port])

    def _window_step(self, tau: int, token: int, messages: dict[str, np.ndarray]) -> np.ndarray:
        """Step `tau` of the window: integrate and fire (or accumulate, for a readout)."""
        readout = not self.op.sends_spikes
        if not 0 <= tau < self.steps:
            return self._held() if readout else np.zeros(self.out.shape, dtype=np.int64)
        if tau == 0:
            self.accumulated = 0
            self.membrane = None if readout else self.neuron(token).reset(self.out.shape)
        current = self.current(tau, token, {port: self._input(port, messages) for port in self.PORTS})
        if readout:
            self.accumulated = self.accumulated + current
            if tau == self.steps - 1:
                self.held = self.op.payload(self.accumulated, self.steps)
                self.record[0] = self.held
            return self._held()
        spikes, self.membrane = self.neuron(token).step(self.membrane, current)
        self.record[tau] = spikes
        return spikes

    def neuron(self, token: int) -> fx.IntNeuron:
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

    def neuron(self, token: int) -> fx.IntNeuron:
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
