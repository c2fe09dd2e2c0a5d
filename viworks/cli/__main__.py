"""``python -m viworks.cli``: the ``viworks`` command (tests and benchmarks run it so)."""

import sys

from viworks.cli.parser import main

sys.exit(main())
