"""``python -m explorer.cli``: the same as the ``explorer`` console script."""

import sys

from explorer.cli import main

sys.exit(main())
