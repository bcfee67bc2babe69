"""python -m qz.cli ...: the same as the `qz` command."""
import sys

from . import main

sys.exit(main())
