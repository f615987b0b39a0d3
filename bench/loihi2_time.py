"""The time model checked on the chip: PilotNet SNN's predicted step against Intel's measured one.

    python bench/loihi2_time.py [--measured ../shared/loihi2-measured]

Intel ran PilotNet SNN on one Loihi 2 at 408.91 inferences/s of 16 steps (152.8 us
per step). Its operations are counted from a Lava run of lava-dl's input (one
16-step inference, the input layer on chip, as for the energy check); it is
placed as Intel's compiler placed it (74 cores, `compiler/partition.py`); every
time set predicts the step, unfitted, and the synaptic op time that would make
the loihi2 set reproduce the measurement is solved for (LOIHI2_FIT_SYNOP_NS).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.compiler.layers import network_from_netx
from nxcompile.compiler.partition import place
from nxcompile.compiler.targets import TARGETS
from nxcompile.sim.energy import netx_energy
from nxcompile.sim.timing import PILOTNET_MEASURED_STEP_US, TIME_MODELS, fitted_synop_ns, netx_performance

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "loihi2-measured"
STEPS = 16


def pilotnet_counts(folder: Path):
    """PilotNet SNN's network, Intel-like placement and counted operations per inference."""
    path = folder / "pilotnet_snn" / "network.net"
    rows = netx_energy(path, np.load(folder / "pilotnet_snn" / "input.npy", allow_pickle=False), steps=STEPS,
                       skip_layers=1, input_layer_on_chip=True, reset_interval=STEPS, reset_offset=3).rows
    network = network_from_netx(path)
    return network, place(network, TARGETS["loihi2"]), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", type=Path, default=SHARED)
    args = parser.parse_args()
    network, placement, rows = pilotnet_counts(args.measured)
    print(f"PilotNet SNN on {placement.cores_used} cores; measured {PILOTNET_MEASURED_STEP_US:.1f} us per step")
    for model in TIME_MODELS.values():
        step = netx_performance(network, placement, rows, STEPS, model)
        print(f"{model.name:14} predicted {step.describe()}; predicted / measured = "
              f"{step.seconds * 1e6 / PILOTNET_MEASURED_STEP_US:.2f}")
    fit = fitted_synop_ns(network, placement, rows, STEPS, PILOTNET_MEASURED_STEP_US * 1e-6)
    print(f"LOIHI2_FIT_SYNOP_NS = {fit:.4f}")


if __name__ == "__main__":
    main()
