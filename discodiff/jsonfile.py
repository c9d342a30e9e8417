"""Parsing JSON that came from a file the user gave (a manifest, an options file, a dataset.json, a
safetensors header), so that no input ends in a traceback. Torch-free.

Python's json module recurses once per nesting level, so 200 KB of "[" raises RecursionError (after
about a thousand levels, in microseconds); it is refused like any other malformed file.
"""
from __future__ import annotations

import json

from discodiff.errors import UserError


def parse_json(text: str | bytes, what: str, hint: str):
    """`text` -> the parsed value, or one UserError line: "{what} is not valid JSON (why); {hint}".

    `what` names the input (a path, "the safetensors header of X"); `hint` says what to do."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UserError(f"{what} is not valid JSON for this toolkit (nested too deeply); {hint}") from None
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError is a ValueError
        raise UserError(f"{what} is not valid JSON ({' '.join(str(e).split())[:200]}); {hint}") from None
