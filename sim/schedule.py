"""When each on-chip node works, in steps: the time semantics every executor of a token stream
shares (docs/time-semantics.md "Latency and alignment in Lava and on hardware").

A connection takes `hop` steps (none in Lava's simulator, one on Loihi), so a node's window
starts `hop` steps after its spiking inputs' windows and once its graded inputs are ready;
spikes that must meet spikes from deeper paths wait in delay lines; a token's period is the
step its last value reaches the host, plus one. The Lava backend runs this schedule and the
time model prices it.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from nxcompile.compiler.graph import SpikingGraph, out_kind
from nxcompile.errors import UsageError
from nxcompile.sim import fixed_point as fx

# Lava's Python processes receive, in step t, what was sent in step t (a recv waits for the
# sender's send of the same step), so a connection adds no latency in loihi2-sim; Loihi
# hardware adds one step per connection.
LAVA_HOP = 0
# Lava's Dense sends in step t what it accumulated in step t - 1 (its a_buff), so a message into
# a GradedDense's neurons arrives one step after its sender's.
SYNAPSE_DELAY = 1


@dataclass(frozen=True)
class PortTiming:
    """When one input's messages for a token arrive, in steps after the token entered the chip:
    `first` is the step its first message (a window's first spike, or the one graded value)
    arrives. A node uses what arrived `delay` steps before it acts (its window's steps, or its
    one compute step), so a delay line of that length holds the messages in flight; a graded
    node sums a spike input's window of T arrivals from `first` on instead."""
    spikes: bool
    first: int
    delay: int = 0


@dataclass(frozen=True)
class Timing:
    """A node's place in a token's period: its window's first step (spiking ops and readouts) or
    the step it computes and sends its graded value (norms, graded adds, graded dense, attention)."""
    start: int
    ports: dict[str, PortTiming]


@dataclass(frozen=True)
class Schedule:
    """Every on-chip node's timing; what each host node reading the chip receives (`sinks`, by the
    chip node it reads); the period (from a token's entry to its last value at the host, plus
    one); the initiation interval (the longest any node works on one token: T where spikes
    travel, else 1); and which host nodes run before and after the chip."""
    timings: dict[str, Timing]
    sinks: dict[str, PortTiming]
    period: int
    interval: int
    host_before: list[str]
    host_after: list[str]


@dataclass(frozen=True)
class TokenClock:
    """When each token enters the chip: the `prompt` tokens known in advance every `interval`
    steps, each generated token a `period` after the one before it entered (it exists only once
    that one's logits are back). `interval = period` runs the prompt token by token."""
    prompt: int
    interval: int
    period: int

    def entry(self, token: int) -> int:
        if token < self.prompt:
            return token * self.interval
        return (self.prompt - 1) * self.interval + (token - self.prompt + 1) * self.period

    def slot(self, step: int) -> tuple[int, int]:
        """(token, phase): which token's slot `step` (counted from an activity's own offset) falls in
        and how far into it; (-1, -1) before the first and between the prompt and generation."""
        if step < 0:
            return -1, -1
        if step < self.prompt * self.interval:
            return divmod(step, self.interval)
        after = step - (self.prompt - 1) * self.interval - self.period
        if after < 0:
            return -1, -1
        token, phase = divmod(after, self.period)
        return self.prompt + token, phase


def host_split(spiking: SpikingGraph, program: dict) -> tuple[list[str], list[str]]:
    """Host nodes that feed the chip and host nodes that read it; refuses a host node in between."""
    before, after = [], []
    for name in spiking.order():
        if name in program:
            continue
        reads_chip = any(a in program or a in after for a in spiking.graph.predecessors(name))
        if reads_chip and any(d in program for d in nx.descendants(spiking.graph, name)):
            raise UsageError(f"host node {name} sits between on-chip nodes; the Lava backend runs the host "
                             f"only before and after the chip (mark it on-chip when converting)")
        (after if reads_chip else before).append(name)
    return before, after


def ready_step(op, timing: Timing, timesteps: int) -> int:
    """The step a node's output first leaves it: a readout's at its window's end."""
    return timing.start + timesteps - 1 if op.windowed and not op.sends_spikes else timing.start


def _timing(op, arrivals: dict[str, tuple[bool, int]], timesteps: int) -> Timing:
    """A window op starts once every input's first message is in (spikes that arrived earlier wait in
    a delay line, graded values are kept); a graded op computes once every graded value is in and
    every spike window has fully arrived."""
    if op.windowed:
        start = max(first for _, first in arrivals.values())
    else:
        start = max(first + timesteps - 1 if spikes else first for spikes, first in arrivals.values())
    return Timing(start, {p: PortTiming(spikes, first, 0 if spikes and not op.windowed else start - first)
                          for p, (spikes, first) in arrivals.items()})


def schedule(spiking: SpikingGraph, program: dict, timesteps: int, hop: int = LAVA_HOP) -> Schedule:
    """When each on-chip node works, in steps from a token's entry. A spiking node's first spike is
    sent at `start` and reaches its consumers `hop` steps later; a graded node's value is sent at
    its ready step; host values are sent at step 0."""
    before, after = host_split(spiking, program)
    timings: dict[str, Timing] = {}
    for name in spiking.order():
        if name not in program:
            continue
        arrivals = {}
        for port, source in spiking.inputs(name).items():
            spikes = source in program and out_kind(spiking.op(source)) != "graded"
            first = ready_step(program[source], timings[source], timesteps) + hop if source in program else hop
            arrivals[port] = (spikes, first + (SYNAPSE_DELAY if isinstance(program[name], fx.GradedLinear) else 0))
        timings[name] = _timing(program[name], arrivals, timesteps)
    sinks = {s: PortTiming(out_kind(spiking.op(s)) != "graded", ready_step(program[s], timings[s], timesteps) + hop)
             for name in after for s in spiking.graph.predecessors(name) if s in program}
    last = [sink.first + (timesteps - 1 if sink.spikes else 0) for sink in sinks.values()]   # a spike window, whole
    windows = any(op.windowed for op in program.values())      # a node that works on T steps of each token
    return Schedule(timings, sinks, max(last, default=max(t.start for t in timings.values()) + timesteps) + 1,
                    timesteps if windows else 1, before, after)


def token_period(spiking: SpikingGraph) -> int:
    """Steps from a token's entry to its logits, for a quantised graph at the T it was made for (what
    its static energy is priced over), without building any process."""
    return schedule(spiking, fx.integer_program(spiking), int(spiking.meta["options"]["timesteps"])).period
