"""`python -m nxcompile.cli`: the same command line as `nxcompile`."""
import sys

from nxcompile.cli import main

sys.exit(main())
