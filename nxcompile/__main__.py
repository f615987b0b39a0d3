"""`python -m nxcompile ...`, and so `torchrun --nproc-per-node N -m nxcompile finetune ...`: the command line."""
import nxcompile.cli.__main__  # noqa: F401  (runs it)
