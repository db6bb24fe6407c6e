"""Where the local harness keeps its files; a leaf module that the harness modules share."""

from __future__ import annotations

import os
from pathlib import Path


def aladdin_home() -> Path:
    """Where clusters keep their model folders, logs and state (``$ALADDIN_HOME``)."""
    return Path(os.environ.get("ALADDIN_HOME", Path.home() / ".aladdin"))
