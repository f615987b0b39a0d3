"""Every benchmark of the project, one after the other (`make bench`)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

# neurtransformer_study.py is left out: it fine-tunes a graph per row (hours on 2 cores).
BENCHMARKS = ["reference_throughput.py", "spikedecoder_study.py", "graded_study.py", "methods.py",
              "neurtransformer_ceiling.py", "partition_scale.py", "lava_per_token.py", "loihi2_energy.py"]

if __name__ == "__main__":
    for script in BENCHMARKS:
        print(f"== {script}", flush=True)
        sys.argv = [script]
        runpy.run_path(str(Path(__file__).parent / script), run_name="__main__")
