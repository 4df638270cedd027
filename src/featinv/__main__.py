"""``python -m featinv``: the command line (what ``accelerate launch -m featinv`` runs)."""

import sys

from featinv.cli import main

sys.exit(main())
