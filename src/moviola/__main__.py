import sys

from moviola.cli import main

sys.exit(main())
