"""Reading a user's JSON object file with one-line errors (policies, plugin configuration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aladdin.errors import AladdinError


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file in the error (e.g. "policy file x.json")."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AladdinError(f"{what}: {exc}") from None
    if not isinstance(loaded, dict):
        raise AladdinError(f"{what}: expected a JSON object")
    return loaded
