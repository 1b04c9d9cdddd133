"""`python -m theseus.cli ...`: the `theseus` command."""

import sys

from theseus.cli import main

sys.exit(main())
