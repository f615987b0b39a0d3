"""nxcompile: a neuromorphic deployment compiler from GPT-2 to Loihi 2 (via Lava).

Importing any part of nxcompile installs the Python 3.11 fixes for Lava
(`nxcompile.lava_compat`) first, so every stage that imports Lava gets them.
"""
from nxcompile import lava_compat as _lava_compat

_lava_compat.install()

__version__ = "0.1.0"
