"""`python bench/run.py [--quick] [--only NAME]`: the same as `python -m bench`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.__main__ import main

sys.exit(main())
