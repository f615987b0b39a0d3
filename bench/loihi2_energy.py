"""The energy model against Intel's one Loihi 2 measurement: PilotNet SNN, 1.094 mJ dynamic per inference.

    python bench/loihi2_energy.py [--measured ../shared/loihi2-measured]

Runs PilotNet SNN in Lava as Intel's benchmark ran it on the chip (netx's builders,
reset_interval 16, reset_offset 3, one 16-step inference; the input layer on chip,
its neurons bias-driven: they send lava-dl's own input spikes for this network, since
the benchmark's frame 100 is not public), counts every layer's synaptic ops, neuron
updates and messages from that run, and prices them with every price set of
sim/energy. Loihi 1's published per-op energies are not fitted to the measurement: their
ratio to it is the check. The `loihi2` price set is Loihi 1's scaled by measured /
predicted, the factor this script prints (sim/energy.LOIHI2_FIT_PREDICTED_MJ).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.sim.energy import ENERGY_MODELS, LOIHI2_MEASURED_MJ, netx_energy, total

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "loihi2-measured"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", type=Path, default=SHARED)
    args = parser.parse_args()
    folder = args.measured / "pilotnet_snn"
    rows = netx_energy(folder / "network.net", np.load(folder / "input.npy", allow_pickle=False), steps=16,
                       skip_layers=1, input_layer_on_chip=True, reset_interval=16, reset_offset=3).rows
    synaptic = sum(r.synaptic_ops for r in rows)
    updates = sum(r.neuron_updates for r in rows)
    messages = sum(r.messages for r in rows)
    print(f"PilotNet SNN per inference: {synaptic:,.0f} synaptic ops, {updates:,.0f} neuron updates, "
          f"{messages:,.0f} messages (Lava run, 16 steps)")
    for model in ENERGY_MODELS.values():
        predicted = total(rows, model).snn_pj / 1e9
        print(f"{model.name:10} predicted {predicted:.4f} mJ, measured {LOIHI2_MEASURED_MJ:.4f} mJ: "
              f"ratio {predicted / LOIHI2_MEASURED_MJ:.3f}")
    loihi1 = total(rows, ENERGY_MODELS["loihi"]).snn_pj / 1e9
    print(f"loihi2 = loihi x {LOIHI2_MEASURED_MJ / loihi1:.4f} (LOIHI2_FIT_PREDICTED_MJ = {loihi1:.4f})")


if __name__ == "__main__":
    main()
