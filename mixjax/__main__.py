"""``python -m mixjax ...`` is the ``mixjax`` command."""

import sys

from mixjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
