"""How long a step takes on Loihi, and so how fast a deployment runs: a compute and communication model.

The form is Timcheck, Pierro & Shrestha, "A Compute and Communication Runtime
Model for Loihi 2" (arXiv 2601.10035, 2026): a step lasts as long as its
busiest core takes, every core's time a sum of per-operation costs (a max-affine
lower bound), plus the barrier that ends the step. Here, per core and step,

    compute  = synaptic ops x t_syn + neuron updates x t_update + messages sent x t_send
    network  = packets to cores on its own tile x t_tile + packets to other tiles x t_hop
               + packets to other chips x t_chip          (each serialised at the core's router)
    step     = max over the cores working in it of (compute + network) + barrier(tiles, chips)

The work comes from an activity count (`sim.energy.LayerCounts` of a run, per
token or per netx inference), spread over the blocks of each layer that the
placement made (a block's share of its layer's neurons and input part) and over
the steps the layer works per token (T for a window of a rate-coded population,
one for a value computed once per token); the packets are the messages each
core's blocks send to every other core reading them (`compiler.partition.core_flows`
with the counted message rates). Prefill runs tokens pipelined, a new one every
interval P (every layer busy in a steady step); decode runs one token through the
schedule's depth (`sim.schedule`, one step per connection on hardware), each
step as long as the cores working in it. The host's embedding and LM head are
not part of it.

Constants, per TIME_MODELS entry, each with its source; Loihi 2 has no published
per-operation time, so its set is Loihi 1's scaled by what Intel published of the
speed-up (an assumption for what it left unsaid).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

# Loihi 1's mesh [Davies18]: 128 cores, 4 per tile, 32 tiles in a 4 x 8 mesh; assumed for Loihi 2.
CORES_PER_TILE = 4
TILE_MESH = (4, 8)


@dataclass(frozen=True)
class TimeModel:
    """Nanoseconds per operation, and where each figure comes from."""
    name: str
    synop_ns: float            # one synaptic op (a spike or a payload crossing one synapse)
    update_ns: float           # one neuron update
    send_ns: float             # one message leaving a core (spike generation)
    tile_ns: float             # a packet to a core on the same tile
    hop_ns: float              # a packet to another tile (its first hop)
    chip_ns: float             # a packet to another chip
    barrier_ns: tuple[float, float]   # the barrier over one tile and over a chip's 32 tiles
    source: str

    def barrier(self, tiles: int, chips: int) -> float:
        """ns of the barrier that ends a step: linear in the diameter of the tile mesh it spans,
        Loihi 1's 113 ns at one tile to 465 ns over a chip's 32 (diameter 10 hops); chips, in a
        square grid, extend the mesh (an assumption: no multi-chip barrier time is published)."""
        one, chip = self.barrier_ns
        rows, columns = TILE_MESH
        per_hop = (chip - one) / (rows + columns - 2)
        if chips > 1:
            side = math.ceil(math.sqrt(chips))
            return one + per_hop * (side * rows + math.ceil(chips / side) * columns - 2)
        used_rows = min(rows, tiles)
        return one + per_hop * (used_rows + math.ceil(tiles / used_rows) - 2)


# [Davies18] M. Davies et al., IEEE Micro 38(1) 2018, Table 2 (Loihi 1): synaptic spike op 3.5 ns,
# neuron update 8.4 ns active (5.3 inactive: every neuron here integrates something each step),
# within-tile spike 2.1 ns, tile hop 4.1-6.5 ns (5.3, their middle), barrier 113-465 ns over 1-32 tiles.
LOIHI1 = TimeModel("loihi1", synop_ns=3.5, update_ns=8.4, send_ns=2.1, tile_ns=2.1, hop_ns=5.3, chip_ns=5.3,
                   barrier_ns=(113.0, 465.0),
                   source="Davies et al., IEEE Micro 2018, Table 2 (Loihi 1): synaptic op 3.5 ns, active neuron "
                          "update 8.4 ns, spike within a tile 2.1 ns, tile hop 4.1-6.5 ns (5.3 taken), barrier "
                          "113-465 ns over 1-32 tiles; a chip crossing priced as a hop (no figure published)")
# Loihi 2: Intel announced "up to 10 times faster processing" (newsroom, 30 Sept 2021), namely "double the
# performance when updating a neuron's state and ... spike generation ten-fold" (Ars Technica, Sept 2021,
# Intel's briefing). Synaptic ops, the network and the barrier: no figure published, Loihi 1's kept.
LOIHI2 = dataclasses.replace(
    LOIHI1, name="loihi2", update_ns=LOIHI1.update_ns / 2, send_ns=LOIHI1.send_ns / 10,
    source="Loihi 1's (Davies et al. 2018, Table 2) with neuron updates 2x and spike generation 10x faster, as "
           "Intel stated for Loihi 2 (newsroom and Ars Technica, Sept 2021); synaptic ops, network and barrier "
           "Loihi 1's (not published for Loihi 2: assumed)")
# Checked on the chip: Intel measured PilotNet SNN on one Loihi 2 at 408.91 inferences/s of 16 steps
# (../shared/loihi2-measured), 152.8 us per step. LOIHI2 predicts PILOTNET_LOIHI2_PREDICTED_US for it
# from its Lava run (`python bench/loihi2_time.py`): its busiest core is bound by synaptic ops, so the
# fitted set takes the synaptic op time that reproduces the measurement (fitted to that one number).
PILOTNET_MEASURED_STEP_US = 1e6 / 408.91 / 16
PILOTNET_LOIHI2_PREDICTED_US = 436.74            # `python bench/loihi2_time.py`
LOIHI2_FIT_SYNOP_NS = 1.0993                     # `python bench/loihi2_time.py`
LOIHI2_FITTED = dataclasses.replace(
    LOIHI2, name="loihi2-fitted", synop_ns=LOIHI2_FIT_SYNOP_NS,
    source=f"loihi2 with the synaptic op at {LOIHI2_FIT_SYNOP_NS} ns instead of 3.5, fitted so that PilotNet SNN's "
           f"busiest core gives Intel's measured {PILOTNET_MEASURED_STEP_US:.1f} us per step (bench/loihi2_time.py; "
           f"the unfitted loihi2 set predicts {PILOTNET_LOIHI2_PREDICTED_US:.0f} us): fitted to that one number")
TIME_MODELS = {m.name: m for m in (LOIHI2_FITTED, LOIHI2, LOIHI1)}


@dataclass(frozen=True)
class CoreWork:
    """What every core does in a step it works, per core index: the work, and which layers it holds."""
    synops: np.ndarray
    updates: np.ndarray
    sends: np.ndarray
    packets: np.ndarray        # [cores, 3]: to its own tile, to other tiles, to other chips
    layers: list[set[str]]
    chip: np.ndarray

    @property
    def chips(self) -> int:
        return int(self.chip.max()) + 1 if len(self.chip) else 1

    def nanoseconds(self, model: TimeModel) -> tuple[np.ndarray, np.ndarray]:
        """(compute, network) ns of every core."""
        compute = self.synops * model.synop_ns + self.updates * model.update_ns + self.sends * model.send_ns
        network = self.packets @ np.array([model.tile_ns, model.hop_ns, model.chip_ns])
        return compute, network


def _tile(core: np.ndarray) -> np.ndarray:
    return core // CORES_PER_TILE


def core_work(network, placement, rows, busy_steps: dict[str, int]) -> CoreWork:
    """Each core's work in one of its busy steps, from a run's counts per token (`rows`: name ->
    LayerCounts, layer names as the network's) and the steps each layer works per token."""
    from nxcompile.compiler.partition import core_flows

    cores = placement.cores_used
    synops, updates, sends = np.zeros(cores), np.zeros(cores), np.zeros(cores)
    layers: list[set[str]] = [set() for _ in range(cores)]
    for block in placement.blocks:
        base = block.layer.removesuffix("+acc")
        counts = rows.get(base)
        if counts is None:
            continue
        layer = network.layer(base)
        busy = busy_steps.get(base, 1)
        share = (block.stop - block.start) / layer.neurons
        layers[block.core].add(base)
        if block.role == "accumulator":         # adds its layer's partial sums, one per part and neuron
            updates[block.core] += block.stop - block.start
            synops[block.core] += (block.stop - block.start) * placement.accumulators[base]
            continue
        synops[block.core] += share * counts.synaptic_ops / block.parts / busy
        updates[block.core] += share * counts.neuron_updates / block.parts / busy
        sends[block.core] += share * counts.messages / busy
    counted = dataclasses.replace(network, layers=[
        dataclasses.replace(layer, messages_per_token=rows[layer.name].messages / layer.neurons / busy_steps.get(
            layer.name, 1)) if layer.name in rows else layer for layer in network.layers])
    flows = core_flows(counted, placement.blocks)
    chip = placement.chip_of_core()
    src, dst = flows.pairs[:, 0], flows.pairs[:, 1]
    kind = np.where(chip[src] != chip[dst], 2, np.where(_tile(src) != _tile(dst), 1, 0))
    packets = np.zeros((cores, 3))
    moving = src != dst
    np.add.at(packets, (src[moving], kind[moving]), flows.messages[moving])
    return CoreWork(synops, updates, sends, packets, layers, chip)


@dataclass(frozen=True)
class StepTime:
    """One step's time, which core binds it and by what."""
    seconds: float
    core: int                  # the busiest core (-1: no core works)
    layers: tuple[str, ...]    # what it holds
    binding: str               # "compute", "network" or "barrier"
    compute_s: float
    network_s: float
    barrier_s: float

    def describe(self) -> str:
        if self.core < 0:
            return f"{self.seconds * 1e6:.2f} us (the barrier alone)"
        return (f"{self.seconds * 1e6:.2f} us: core {self.core} ({', '.join(self.layers)}) computes "
                f"{self.compute_s * 1e6:.2f} us and sends {self.network_s * 1e6:.2f} us, barrier "
                f"{self.barrier_s * 1e6:.2f} us; {self.binding} binds")


def step_time(work: CoreWork, model: TimeModel, working: np.ndarray | None = None) -> StepTime:
    """The step in which the cores flagged in `working` (default all) work."""
    compute, network = work.nanoseconds(model)
    total = compute + network
    if working is not None:
        total = np.where(working, total, 0.0)
    chips = work.chips
    barrier = model.barrier(math.ceil(len(work.chip) / CORES_PER_TILE) if chips == 1 else 0, chips) * 1e-9
    if not total.any():
        return StepTime(barrier, -1, (), "barrier", 0.0, 0.0, barrier)
    core = int(np.argmax(total))
    c, n = compute[core] * 1e-9, network[core] * 1e-9
    binding = "barrier" if barrier > c + n else "compute" if c >= n else "network"
    return StepTime(c + n + barrier, core, tuple(sorted(work.layers[core])), binding, c, n, barrier)


# Static power of the chips a deployment holds, per chip: one chip measured, and a system's whole budget.
STATIC_W_PER_CHIP = {
    "one chip": 0.232078,          # Oheo Gulch, Intel's PilotNet SNN measurement (../shared/loihi2-measured)
    "system": 2600.0 / 1152,       # [HP24] Hala Point: 1,152 chips, at most 2,600 W: board, links, power delivery
}


@dataclass(frozen=True)
class Performance:
    """How fast a placed network runs: prefill (tokens known in advance, entering every `interval`
    steps) and decode (one token through the `depth` steps), on `chips` chips."""
    model: TimeModel
    steady: StepTime               # a prefill step, every layer working
    decode_steps: list[StepTime]   # each step of one token's pass through the depth
    interval: int
    chips: int

    @property
    def decode_seconds(self) -> float:
        return sum(step.seconds for step in self.decode_steps)

    def prefill_seconds(self, tokens: int) -> float:
        """Seconds until the last of `tokens` prompt tokens is out: the time to the first generated token."""
        return self.decode_seconds + (tokens - 1) * self.interval * self.steady.seconds

    def static_pj(self, seconds: float, watts_per_chip: float) -> float:
        return watts_per_chip * self.chips * seconds * 1e12

    def slowest_decode_step(self) -> StepTime:
        return max(self.decode_steps, key=lambda step: step.seconds)


def performance(work: CoreWork, model: TimeModel, active_per_step: list[set[str]], interval: int) -> Performance:
    """Prefill's steady step and decode's steps: in step s of a token's pass, the cores holding a layer
    of `active_per_step[s]` work."""
    steady = step_time(work, model)
    decode = [step_time(work, model, np.array([bool(held & active) for held in work.layers]))
              for active in active_per_step]
    return Performance(model, steady, decode, interval, work.chips)


def graph_activity(spiking, hop: int = 1) -> tuple[dict[str, int], list[set[str]], int]:
    """For an nxcompile graph on hardware (`hop` steps a connection): the steps each on-chip node works
    per token, which nodes work in each step of a token's pass, and the initiation interval."""
    from nxcompile.sim import fixed_point as fx
    from nxcompile.sim.schedule import schedule

    timesteps = int(spiking.meta["options"]["timesteps"])
    program = fx.integer_program(spiking)
    plan = schedule(spiking, program, timesteps, hop)
    busy = {name: timesteps if op.windowed else 1 for name, op in program.items()}
    active = [set() for _ in range(plan.period)]
    for name, timing in plan.timings.items():
        for step in range(timing.start, min(plan.period, timing.start + busy[name])):
            active[step].add(name)
    return busy, active, plan.interval


def graph_performance(spiking, placement, rows: list, model: TimeModel) -> Performance:
    """A quantised nxcompile graph placed on Loihi 2, its activity counted per token (`rows`)."""
    from nxcompile.compiler.layers import network_from_graph

    busy, active, interval = graph_activity(spiking)
    work = core_work(network_from_graph(spiking), placement, {r.name: r for r in rows}, busy)
    return performance(work, model, active, interval)


def netx_work(network, placement, rows: list, steps_per_inference: int) -> CoreWork:
    """Each core's work in a step of a lava-dl netx network placed on Loihi 2 (every layer works every
    step), its activity counted per inference (`rows`, a skipped input layer counted on chip as itself)."""
    counts = {r.name.removesuffix(" (bias-driven)"): r for r in rows}
    return core_work(network, placement, counts, {name: steps_per_inference for name in counts})


def netx_performance(network, placement, rows: list, steps_per_inference: int, model: TimeModel) -> StepTime:
    """One step of a lava-dl netx network placed on Loihi 2 (`netx_work`)."""
    return step_time(netx_work(network, placement, rows, steps_per_inference), model)


@dataclass(frozen=True)
class PerfReport:
    """Prefill and decode of a placed graph on Loihi 2: steps, time, tokens/s, time to first token
    and energy per token (dynamic at the given price set, plus static over the time the chips are
    held per token, at both ends of STATIC_W_PER_CHIP); `ann`: the original model measured."""
    source: str
    performance: Performance
    dynamic_pj: float              # per token
    price_set: str
    prompt_tokens: int
    cores: int
    ann: object = None             # models.ann_speed.AnnSpeed

    def phases(self) -> dict[str, dict]:
        p, n = self.performance, self.prompt_tokens
        prefill = p.prefill_seconds(n) / n
        return {"prefill": {"steps": p.interval, "step_s": p.steady.seconds, "token_s": prefill,
                            "ttft_s": p.prefill_seconds(n)},
                "decode": {"steps": len(p.decode_steps), "step_s": p.decode_seconds / len(p.decode_steps),
                           "token_s": p.decode_seconds}}

    def energy_pj(self, token_s: float) -> dict[str, float]:
        """Dynamic + static pJ per token at each static power per chip."""
        return {name: self.dynamic_pj + self.performance.static_pj(token_s, watts)
                for name, watts in STATIC_W_PER_CHIP.items()}

    def format(self) -> str:
        p = self.performance
        lines = [f"{self.source}: {self.cores:,} cores on {p.chips} chip(s); time model {p.model.name}: "
                 f"{p.model.source}",
                 f"{'phase':8} {'steps/token':>11} {'us/step':>9} {'tokens/s':>10} {'TTFT':>13}"
                 f" {'mJ/token, dynamic + static at 0.232 .. 2.26 W/chip':>52}"]
        for phase, f in self.phases().items():
            energy = self.energy_pj(f["token_s"])
            ttft = f"{f['ttft_s'] * 1e3:>10.2f} ms" if phase == "prefill" else f"{'-':>13}"
            lines.append(f"{phase:8} {f['steps']:>11} {f['step_s'] * 1e6:>9.2f} {1 / f['token_s']:>10,.1f} "
                         f"{ttft} {self.dynamic_pj / 1e9:>14.5f} + "
                         f"{(energy['one chip'] - self.dynamic_pj) / 1e9:.5f} .. "
                         f"{(energy['system'] - self.dynamic_pj) / 1e9:.5f}")
        lines += [f"prefill step: {p.steady.describe()}",
                  f"slowest decode step: {p.slowest_decode_step().describe()}",
                  f"dynamic energy at the {self.price_set} prices; static over the time per token at "
                  f"{STATIC_W_PER_CHIP['one chip']:.3f} W per chip (one Loihi 2, measured) .. "
                  f"{STATIC_W_PER_CHIP['system']:.2f} W (Hala Point's 2,600 W over its 1,152 chips); the host's "
                  f"embedding and LM head are not counted"]
        if self.ann is not None:
            lines.append(f"ANN measured: {self.ann.describe()}")
        return "\n".join(lines)


def fitted_synop_ns(network, placement, rows: list, steps_per_inference: int, measured_s: float) -> float:
    """The synaptic op time at which the loihi2 set predicts a netx network's measured step (bisection:
    the step grows with it)."""
    work = netx_work(network, placement, rows, steps_per_inference)
    low, high = 0.0, LOIHI2.synop_ns
    for _ in range(60):
        middle = (low + high) / 2
        step = step_time(work, dataclasses.replace(LOIHI2, synop_ns=middle))
        low, high = (middle, high) if step.seconds < measured_s else (low, middle)
    return (low + high) / 2
