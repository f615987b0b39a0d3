"""Compilation targets as data: Loihi chips and boards, and Lava's CPU simulation of Loihi 2.

Every number carries its public source. Sources, cited below by key:

  [Davies18]  M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with
              On-Chip Learning", IEEE Micro 38(1), 2018 (Table 1: core resources,
              Table 2: energy per operation).
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

Where Intel has not published a Loihi 2 figure, the Loihi 1 figure is used and
the comment says so: such a number is an assumption, not a datasheet value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from nxcompile.errors import UsageError


@dataclass(frozen=True)
class EnergyPerOp:
    """Energy of one operation on the chip, in picojoules."""
    synaptic_op_pj: float       # one spike crossing one synapse (accumulate)
    neuron_update_pj: float     # one active neuron (compartment) update
    spike_in_tile_pj: float     # sending a spike within a tile
    spike_per_hop_pj: float     # each router hop of a spike between tiles
    source: str


@dataclass(frozen=True)
class Target:
    """One deployment target and its limits. `chips=None` means as many chips as needed."""
    name: str
    description: str
    chips: int | None
    cores_per_chip: int
    neurons_per_core: int
    synaptic_memory_bits_per_core: int
    input_axons_per_core: int           # distinct source neurons a core can receive from
    output_axons_per_core: int          # routes out of a core
    weight_mantissa_bits: int           # signed
    weight_exponent_bits: int
    state_bits: int                     # membrane voltage / current
    decay_bits: int
    threshold_bits: int
    bias_mantissa_bits: int
    bias_exponent_bits: int
    graded_payload_bits: int            # 0: binary spikes only
    max_delay_steps: int
    energy: EnergyPerOp
    simulated: bool = False

    @property
    def total_cores(self) -> int | None:
        return None if self.chips is None else self.chips * self.cores_per_chip

    def describe(self) -> dict[str, object]:
        """Every field, flattened, for printing."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, EnergyPerOp):
                out.update({k.name: getattr(value, k.name) for k in fields(value)})
            else:
                out[f.name] = "as many as needed" if value is None else value
        return out


LOIHI1_ENERGY = EnergyPerOp(
    synaptic_op_pj=23.6,        # [Davies18] Table 2, synaptic spike op (min)
    neuron_update_pj=81.0,      # [Davies18] Table 2, neuron update (active)
    spike_in_tile_pj=1.7,       # [Davies18] Table 2, within-tile spike energy
    spike_per_hop_pj=3.5,       # [Davies18] Table 2, cross-tile spike energy per hop
    source="Davies et al., IEEE Micro 2018, Table 2 (Loihi 1, 14 nm)")

# Intel has not published per-operation energies for Loihi 2: Loihi 1's are
# used, an assumption stated wherever an energy figure is printed.
LOIHI2_ENERGY = EnergyPerOp(
    synaptic_op_pj=LOIHI1_ENERGY.synaptic_op_pj,
    neuron_update_pj=LOIHI1_ENERGY.neuron_update_pj,
    spike_in_tile_pj=LOIHI1_ENERGY.spike_in_tile_pj,
    spike_per_hop_pj=LOIHI1_ENERGY.spike_per_hop_pj,
    source="Loihi 1 figures (Davies et al. 2018, Table 2) assumed: "
           "Intel has not published Loihi 2 per-operation energies")

LOIHI1 = Target(
    name="loihi1",
    description="Loihi 1, one chip (for contrast: binary spikes only)",
    chips=1,
    cores_per_chip=128,                         # [Davies18]
    neurons_per_core=1024,                      # [Davies18] 1,024 compartments per core
    synaptic_memory_bits_per_core=16 * 2**20 * 8 // 128,   # [CAS22] 16 MB over 128 cores
    input_axons_per_core=4096,                  # [Davies18] Table 1, fan-in axons per core
    output_axons_per_core=4096,                 # [Davies18] Table 1, fan-out axons per core
    weight_mantissa_bits=8,                     # [Davies18] 1-9 bit weights incl. sign; 8 as in [Lava]
    weight_exponent_bits=4,                     # [Davies18] shared weight exponent -8..7
    state_bits=24,                              # [Lava] u, v 24-bit (Loihi 1 bit-accurate model)
    decay_bits=12,                              # [Lava] du, dv 12-bit
    threshold_bits=17,                          # [Lava] vth mantissa 17-bit, shifted by 6
    bias_mantissa_bits=13,                      # [Lava]
    bias_exponent_bits=3,                       # [Lava]
    graded_payload_bits=0,                      # [Davies18] binary spikes only
    max_delay_steps=62,                         # [Davies18] 6-bit synaptic delays
    energy=LOIHI1_ENERGY,
)

LOIHI2 = Target(
    name="loihi2",
    description="Loihi 2, one chip",
    chips=1,
    cores_per_chip=128,                         # [Brief21]
    neurons_per_core=8192,                      # [Brief21] 1M neurons / 128 cores
    synaptic_memory_bits_per_core=128 * 1024 * 8,   # [Brief21] 128 KB SRAM per core
    input_axons_per_core=4096,                  # not published for Loihi 2: Loihi 1's [Davies18] assumed
    output_axons_per_core=4096,                 # not published for Loihi 2: Loihi 1's [Davies18] assumed
    weight_mantissa_bits=8,                     # [Lava] 8-bit weights ...
    weight_exponent_bits=4,                     # ... with a shared exponent (Loihi 1's range assumed)
    state_bits=24,                              # [Lava]
    decay_bits=12,                              # [Lava]
    threshold_bits=17,                          # [Lava]
    bias_mantissa_bits=13,                      # [Lava]
    bias_exponent_bits=3,                       # [Lava]
    graded_payload_bits=24,                     # [Brief21] graded spikes; [Lava] 24-bit s_out
    max_delay_steps=62,                         # not published for Loihi 2: Loihi 1's assumed
    energy=LOIHI2_ENERGY,
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
