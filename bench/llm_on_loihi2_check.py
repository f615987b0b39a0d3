"""The core model against the one published LLM on Loihi 2 (Abreu et al. 2025, arXiv 2503.18002).

    python bench/llm_on_loihi2_check.py [--parameters 370e6] [--chips 24]

Abreu et al. ran a 370M-parameter MatMul-free language model (ternary weights in
BitLinear layers, 8-bit quantised, 24-bit activations) on 24 Loihi 2 chips. Under
nxcompile's memory model fitted to Intel's compiler (12,000 words of 50 bits per
core, a dense synapse its signed weight bits + 8: `compiler/targets.py`), this
prints how many chips the weights alone need, densely stored, at each weight
width, and what fraction of the weights a 24-chip deployment could store at most; then,
in the sparse format (each kept synapse also a 12-bit index: an assumption, docs/calibration.md),
the largest fraction of synapses kept with which the 24 chips hold the model.
"""
from __future__ import annotations

import argparse
import math

from nxcompile.compiler.partition import synapse_words
from nxcompile.compiler.targets import TARGETS

FAN_OUT = 4096          # synapses of one input axon on one core: a full core's neurons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameters", type=float, default=370e6)
    parser.add_argument("--chips", type=int, default=24)
    args = parser.parse_args()
    target = TARGETS["loihi2"]
    core_bits = target.synapse_words_per_core * target.synapse_word_bits
    print(f"{args.parameters / 1e6:.0f}M weights, Loihi 2 core: {target.synapse_words_per_core:,} words x "
          f"{target.synapse_word_bits} bits; {target.cores_per_chip} cores per chip")
    for bits in (8, 4, 2, 1):
        per_synapse = synapse_words(FAN_OUT, bits, target) * target.synapse_word_bits / FAN_OUT
        cores = math.ceil(args.parameters * per_synapse / core_bits)
        room = args.chips * target.cores_per_chip * core_bits / per_synapse
        print(f"{bits}-bit weights ({per_synapse:.2f} bits a synapse): {cores:,} cores, "
              f"{math.ceil(cores / target.cores_per_chip)} chips dense; {args.chips} chips hold "
              f"{room / 1e6:.0f}M synapses = {100 * min(1.0, room / args.parameters):.0f} % of the weights")
        kept = next(d / 1000 for d in range(1000, 0, -1)
                    if args.parameters * synapse_words(FAN_OUT, bits, target, d / 1000) * target.synapse_word_bits
                    / FAN_OUT <= args.chips * target.cores_per_chip * core_bits)
        print(f"    sparse: {args.chips} chips hold the model with at most {100 * kept:.1f} % of its synapses kept")


if __name__ == "__main__":
    main()
