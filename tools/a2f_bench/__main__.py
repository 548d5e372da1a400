"""``python -m a2f_bench``: the ``a2f-bench`` command."""

import sys

from a2f_bench.cli import main

sys.exit(main())
