"""``python -m moviola.cli``, as the single-file cli.py ran before it became a package."""
import sys

from moviola.cli import main

sys.exit(main())
