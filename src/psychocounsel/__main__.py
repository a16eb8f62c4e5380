"""``python -m psychocounsel``: the same CLI, for launchers that take a module
(``accelerate launch -m psychocounsel train-rm ...``)."""

import sys

from .cli import main

sys.exit(main())
