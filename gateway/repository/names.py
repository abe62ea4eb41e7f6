"""Model names: what a model folder of the repository may be called.

Kept apart from :mod:`gateway.repository.model_repository` (which imports the backends and ONNX) so
that ``gateway push`` can check a name before it imports anything heavy.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidArgumentError

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
#: Longest model name: a folder name, well within every filesystem's 255 bytes.
MAX_MODEL_NAME_LENGTH = 200


def valid_model_name(name: str) -> bool:
    """Whether ``name`` is a model name: ``[A-Za-z0-9_.-]+``, at most :data:`MAX_MODEL_NAME_LENGTH`
    characters, not starting with a dot (hidden folders)."""
    return len(name) <= MAX_MODEL_NAME_LENGTH and bool(MODEL_NAME_PATTERN.fullmatch(name)) and not name.startswith(".")


def check_model_name(name: str) -> None:
    """Refuse a name that is not a model name (:func:`valid_model_name`).

    Raises:
        InvalidArgumentError: the message says what a model name may hold.
    """
    if not valid_model_name(name):
        raise InvalidArgumentError(
            f"invalid model name '{name[:MAX_MODEL_NAME_LENGTH]}': use letters, digits, '_', '.', '-' "
            f"(at most {MAX_MODEL_NAME_LENGTH}, not starting with '.')"
        )
