"""`--target loihi2`: the same Lava processes on Loihi 2 hardware, through Intel's Loihi extension.

lava-loihi is distributed to Intel's research community only, so it is not a
dependency; without it `run_config` says so in one line. With it, the
processes of `backends.lava_sim` run under `Loihi2HwCfg`; each process carries
the cores the partitioner gave its node (`cores` in its parameters). Our
processes have fixed-point Python models only: a Loihi 2 microcode model for
them is not written yet, so Lava would run them on the host beside the chip.
Not exercised here: no Loihi system is reachable from this project's machines.
"""
# No `from __future__ import annotations`: Lava executes this file as a loose module.
import nxcompile  # noqa: F401  (Lava's Python 3.11 fixes)
from nxcompile.errors import UsageError


def lava_loihi_installed() -> bool:
    from lava.utils import loihi

    return loihi.is_installed()


def run_config(target_name: str):
    """Lava's run configuration for a target: the CPU simulator for a simulated target, Loihi 2
    hardware when Intel's extension is here, one clear line otherwise."""
    from nxcompile.compiler.targets import get_target

    target = get_target(target_name)
    if target.simulated:
        from nxcompile.backends.lava_sim import simulator_config

        return simulator_config()
    if not target.name.startswith("loihi2"):
        raise UsageError(f"Lava runs Loihi 2 only, not {target.name}; --target loihi2-sim runs the model on the CPU")
    if not lava_loihi_installed():
        raise UsageError(f"--target {target.name} needs Intel's Loihi extension for Lava (lava-loihi), which is not "
                         f"installed here; --target loihi2-sim runs the same model on the CPU")
    from lava.magma.core.run_configs import Loihi2HwCfg

    return Loihi2HwCfg(select_tag="fixed_pt")
