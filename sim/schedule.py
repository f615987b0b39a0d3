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
    """When one input's messages are meant for this node.
    Spikes: `delay` steps in this node's delay line before use (window ops), or the
    step its window of T arrivals starts (`window_start`, graded ops summing it).
    Graded: read as held, at this node's own step."""
    spikes: bool
    delay: int = 0
    window_start: int = 0


@dataclass(frozen=True)
class Timing:
    """A node's place in the token's period: its window's first step (spiking ops and
    readouts) or the step it computes and sends its graded value (norms, graded adds)."""
    start: int
    ports: dict[str, PortTiming]


@dataclass(frozen=True)
class Schedule:
    """Every on-chip node's timing, the token period, and which host nodes run before and after the chip."""
    timings: dict[str, Timing]
    period: int
    host_before: list[str]
    host_after: list[str]


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
    if not op.windowed:
        start = max(first + timesteps - 1 if spikes else first for spikes, first in arrivals.values())
        return Timing(start, {p: PortTiming(spikes, window_start=first) for p, (spikes, first) in arrivals.items()})
    start = max(first for _, first in arrivals.values())
    ports = {p: PortTiming(spikes, delay=start - first if spikes else 0) for p, (spikes, first) in arrivals.items()}
    return Timing(start, ports)


def schedule(spiking: SpikingGraph, program: dict, timesteps: int, hop: int = LAVA_HOP) -> Schedule:
    """When each on-chip node integrates, in steps from the start of a token's period.
    A spiking node's first spike is sent at `start` and reaches its consumers `hop`
    steps later; a graded node's value is sent at `start` and held; host values are
    sent at step 0."""
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
    last = [ready_step(program[s], timings[s], timesteps) + hop
            + (timesteps - 1 if out_kind(spiking.op(s)) != "graded" else 0)     # a spike window, whole
            for name in after for s in spiking.graph.predecessors(name) if s in program]
    return Schedule(timings, max(last, default=max(t.start for t in timings.values()) + timesteps) + 1,
                    before, after)


def token_period(spiking: SpikingGraph) -> int:
    """Steps Lava takes per token for a quantised graph at the T it was made for (what its static
    energy is priced over), without building its processes."""
    return schedule(spiking, fx.integer_program(spiking), int(spiking.meta["options"]["timesteps"])).period
