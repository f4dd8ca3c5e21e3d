"""The core tier runs the real core against fakes of its two edges (fake.py); it needs no root."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
