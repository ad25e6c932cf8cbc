"""Old names that keep working: a renamed function or keyword warns once per call site and does the same thing.

Names were changed to say what they hold (``min_cosine``, not ``cutoff``); code and notebooks written
against the old names run unchanged, with a ``DeprecationWarning`` that names the new one.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed(func: F, old: str) -> F:
    """``func`` under its old name ``old``: same call, plus a DeprecationWarning naming ``func``."""

    @functools.wraps(func)
    def alias(*args, **kwargs):
        warnings.warn(f"{old} is deprecated: use {func.__name__}", DeprecationWarning, stacklevel=2)
        return func(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated name of :func:`{func.__name__}` (same arguments, same result)."
    return alias  # type: ignore[return-value]


def renamed_keyword(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of keyword ``new``, or of its old name ``old`` if the caller used that (with a warning)."""
    if old_value is None:
        return new_value
    warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
    return old_value
