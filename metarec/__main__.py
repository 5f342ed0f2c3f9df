"""``python -m metarec ...``: the entry point the launchers use (torchrun, deepspeed, SLURM)."""

import sys

from metarec.cli import main

sys.exit(main())
