"""``python -m fernoise`` (and ``torchrun -m fernoise``)."""
import sys

from fernoise.cli import main

sys.exit(main())
