"""Compilation targets as data: Loihi chips and boards, and Lava's CPU simulation of Loihi 2.

Every number carries its public source. Sources, cited below by key:

  [Davies18]  M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with
              On-Chip Learning", IEEE Micro 38(1), 2018 (Table 1: core resources,
              Table 2: energy per operation, whose price sets live in sim/energy).
  [CAS22]     IEEE Circuits and Systems Magazine Q2 2022, neuromorphic survey:
              "Loihi includes a total of 16MB of synaptic memory" over 128 cores.
  [Brief21]   Intel Labs, "Taking Neuromorphic Computing to the Next Level with
              Loihi 2", technology brief, 2021: 128 neuromorphic cores, up to 1M
              neurons and 120M synapses per chip, graded spikes, 128 KB of local
              SRAM per core, flexibly partitioned.
  [KP21]      Intel newsroom, 30 Sept 2021: Kapoho Point, a board of 8 Loihi 2 chips.
  [HP24]      Intel newsroom, 17 Apr 2024: Hala Point, 1,152 Loihi 2 processors,
              1.15 billion neurons, 128 billion synapses, 140,544 neuromorphic cores.
  [Lava]      lava-nc 0.10.0 source, the bit-accurate Loihi models:
              lava/proc/lif/models.py (u, v 24-bit; du, dv 12-bit; bias mantissa
              13-bit, exponent 3-bit; graded s_out 24-bit) and
              lava/proc/dense/process.py (8-bit weights with a shared weight_exp).
  [Log]       Intel's Loihi 2 compiler (lava-loihi) on PilotNet SNN and SDNN, its
              logs verbatim in ../shared/loihi2-measured/README.md (from lava-dl's
              benchmark notebooks): `cost_db.registers['SynMem'] = 12000`, the
              allocations it printed while splitting the 2,560 -> 100 dense layer
              (61,440 and 66,560 words on one core, 12,800 on six) and its
              per-core table (means over each layer's cores).

How the Loihi 2 per-core model follows from [Log] (tests/test_calibration.py
checks every figure against the logs):
  * synaptic memory is 12,000 words per core (the register limit the compiler hit);
  * a dense layer stores, per input axon, its synapses to the core's n neurons in
    ceil(n (b + 8) / 50) words, b a layer's signed weight bits as netx's
    optimize_weight_bits finds them: the one rule, of 50 payload bits per word
    and 8 bits per synapse besides its weight, that gives all 12 dense figures of
    both logs exactly (61,440 = 2,560 x 24 words for n = 100 at b = 4; 66,560 =
    2,560 x 26 at b = 5; 12,800 at n = 17; 1,300 / 1,500 / 150 / 10 per core);
  * a conv layer stores its kernels once per core, ceil(C_out b / 64) words per input
    channel and kernel tap (6 of the 10 logged conv figures exactly, one word short on
    the others; an assumption, far below the limit on every logged layer), and reads
    its input through 1 or 2 axons per core ([Log]: AxonIn 1-2 on every conv core);
    a KV cache (not in the logs) is such an array too: 2 head_dim values of kv_bits
    per cached token-step and head, ceil(2 head_dim kv_bits / 64) words;
  * neurons: conv and input layers are tiled in power-of-two columns, every row and
    channel per core, with fewer than 4,096 neurons (the logged tiles hold 2,048 to
    3,168 neurons and the compiler never took a 4,096-neuron tile where one was
    available: the limit lies in [3,168, 4,095], 4,095 taken); the same limit is
    assumed for every layer (the brief's 8,192 is for the simplest neuron model);
  * a layer too big for one core is split into k cores, k multiplied by the largest
    ratio of need to limit until every core fits, neurons dealt ceil(n / k) per core
    ([Log]: 1 -> 6 -> 12 cores for 2,560 -> 100, 11 cores of 9 neurons and one of 1).
Input axons per core stay Loihi 1's 4,096 (not in the logs; 2,560 seen, not binding).

Where Intel has not published a Loihi 2 figure, the Loihi 1 figure is used and
the comment says so: such a number is an assumption, not a datasheet value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from nxcompile.errors import UsageError
from nxcompile.sim.fixed_point import DECAY_BITS


# [Log] every conv core of both logs reads its input through 1 or 2 axons (AxonIn): a convolution's
# input arrives on a few shared axons, whatever its size; 2 are booked per conv block.
CONV_INPUT_AXONS = 2


@dataclass(frozen=True)
class Target:
    """One deployment target and its limits. `chips=None` means as many chips as needed."""
    name: str
    description: str
    chips: int | None
    cores_per_chip: int
    neurons_per_core: int
    synapse_words_per_core: int         # synaptic memory, in words
    synapse_word_bits: int              # payload bits of one word
    synapse_overhead_bits: int          # bits a dense synapse needs besides its weight
    sparse_index_bits: int              # bits a sparse synapse adds to name its target neuron
    array_word_bits: int                # arrays at implied positions (conv kernels, KV caches): bits per word
    input_axons_per_core: int           # distinct source neurons a core can receive from
    weight_mantissa_bits: int           # signed
    weight_exponent_bits: int
    state_bits: int                     # membrane voltage / current
    decay_bits: int
    threshold_bits: int
    bias_mantissa_bits: int
    bias_exponent_bits: int
    graded_payload_bits: int            # 0: binary spikes only
    energy_model: str                   # the price set of sim/energy for this chip
    simulated: bool = False

    @property
    def total_cores(self) -> int | None:
        return None if self.chips is None else self.chips * self.cores_per_chip

    def describe(self) -> dict[str, object]:
        """Every field, for printing."""
        return {f.name: "as many as needed" if getattr(self, f.name) is None else getattr(self, f.name)
                for f in fields(self)}


LOIHI1 = Target(
    name="loihi1",
    description="Loihi 1, one chip (for contrast: binary spikes only)",
    chips=1,
    cores_per_chip=128,                         # [Davies18]
    neurons_per_core=1024,                      # [Davies18] 1,024 compartments per core
    synapse_words_per_core=16 * 2**20 * 8 // 128 // 64,   # [CAS22] 16 MB over 128 cores, as 64-bit words
    synapse_word_bits=64,                       # assumed: weights packed without per-synapse overhead
    synapse_overhead_bits=0,
    sparse_index_bits=10,                       # assumed: the index of one of 1,024 neurons
    array_word_bits=64,
    input_axons_per_core=4096,                  # [Davies18] Table 1, fan-in axons per core
    weight_mantissa_bits=8,                     # [Davies18] 1-9 bit weights incl. sign; 8 as in [Lava]
    weight_exponent_bits=4,                     # [Davies18] shared weight exponent -8..7
    state_bits=24,                              # [Lava] u, v 24-bit (Loihi 1 bit-accurate model)
    decay_bits=DECAY_BITS,                      # [Lava] du, dv 12-bit
    threshold_bits=17,                          # [Lava] vth mantissa 17-bit, shifted by 6
    bias_mantissa_bits=13,                      # [Lava]
    bias_exponent_bits=3,                       # [Lava]
    graded_payload_bits=0,                      # [Davies18] binary spikes only
    energy_model="loihi",                       # [Davies18] Table 2
)

LOIHI2 = Target(
    name="loihi2",
    description="Loihi 2, one chip",
    chips=1,
    cores_per_chip=128,                         # [Brief21]
    neurons_per_core=4095,                      # [Log] conv tiles < 4,096 neurons (module docstring)
    synapse_words_per_core=12_000,              # [Log] cost_db.registers['SynMem'] = 12000
    synapse_word_bits=50,                       # [Log] fitted: all 12 dense figures of both logs
    synapse_overhead_bits=8,                    # [Log] fitted with it
    sparse_index_bits=12,                       # assumed: the index of one of 4,095 neurons (calibration.md)
    array_word_bits=64,                         # [Log] fitted: 6 of 10 conv figures (module docstring)
    input_axons_per_core=4096,                  # not published for Loihi 2: Loihi 1's [Davies18] assumed
    weight_mantissa_bits=8,                     # [Lava] 8-bit weights ...
    weight_exponent_bits=4,                     # ... with a shared exponent (Loihi 1's range assumed)
    state_bits=24,                              # [Lava]
    decay_bits=DECAY_BITS,                      # [Lava]
    threshold_bits=17,                          # [Lava]
    bias_mantissa_bits=13,                      # [Lava]
    bias_exponent_bits=3,                       # [Lava]
    graded_payload_bits=24,                     # [Brief21] graded spikes; [Lava] 24-bit s_out
    energy_model="loihi2",                      # sim/energy: fitted to a Loihi 2 measurement
)


def _board(base: Target, name: str, description: str, chips: int | None,
           cores_per_chip: int | None = None, simulated: bool = False) -> Target:
    """A target made of `chips` copies of `base` (same per-core limits)."""
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    values.update(name=name, description=description, chips=chips, simulated=simulated,
                  cores_per_chip=cores_per_chip or base.cores_per_chip)
    return Target(**values)


TARGETS: dict[str, Target] = {t.name: t for t in (
    _board(LOIHI2, "loihi2-sim", "Lava CPU simulation (Loihi2SimCfg) under Loihi 2 per-core "
           "limits; as many chips as the model needs", chips=None, simulated=True),
    LOIHI2,
    _board(LOIHI2, "loihi2-kapoho-point", "Kapoho Point, 8 Loihi 2 chips", chips=8),   # [KP21]
    # [HP24] 140,544 cores / 1,152 chips = 122 usable cores per chip.
    _board(LOIHI2, "loihi2-hala-point", "Hala Point, 1,152 Loihi 2 chips", chips=1152,
           cores_per_chip=140_544 // 1152),
    LOIHI1,
)}
TARGET_NAMES = tuple(TARGETS)


def check_target_name(name: str) -> str:
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)}")
    return name


def get_target(name: str) -> Target:
    return TARGETS[check_target_name(name)]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def targets_table() -> str:
    """Every target's limits side by side, then each target's description and energy price set."""
    from nxcompile.sim.energy import ENERGY_MODELS

    rows = {name: target.describe() for name, target in TARGETS.items()}
    fields = [f for f in next(iter(rows.values())) if f not in ("name", "source", "description")]
    lines = [f"{'':32}" + "".join(f"{name:>22}" for name in rows)]
    lines += [f"{field:32}" + "".join(f"{_cell(rows[name][field]):>22}" for name in rows) for field in fields]
    lines.append("")
    lines += [f"{name}: {target.description}. Energy ({target.energy_model}): "
              f"{ENERGY_MODELS[target.energy_model].source}." for name, target in TARGETS.items()]
    lines.append("Sources of every figure: compiler/targets.py.")
    return "\n".join(lines)
