"""``python -m fpq.cli``."""
import sys

from . import main

sys.exit(main())
