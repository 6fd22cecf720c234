"""Values that reach an operator as text because a template rendered them (no native rendering)."""

from __future__ import annotations

import ast
import json
from typing import Any


def parse_rendered_literal(text: str) -> Any:
    """JSON, or the Python literal a plain ``{{ xcom }}`` template renders; ``ValueError`` otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None
