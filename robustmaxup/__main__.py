"""``python -m robustmaxup`` is the ``robustmaxup`` console script."""

import sys

from robustmaxup.cli import main

if __name__ == "__main__":
    sys.exit(main())
