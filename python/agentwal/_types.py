"""Small value types shared by the Python layer and the native module."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Happened", "NotHappened", "NOT_HAPPENED"]


class Happened(Generic[T]):
    """A reconcile probe's answer: the effect happened, with this result.

    The result is recorded as the effect's outcome and returned by ``run``.
    """

    __slots__ = ("value",)

    def __init__(self, value: T = None) -> None:  # type: ignore[assignment]
        self.value = value

    def __repr__(self) -> str:
        return f"Happened({self.value!r})"


class NotHappened:
    """A reconcile probe's answer: the effect did not happen; run it again (same key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_HAPPENED"


#: The singleton :class:`NotHappened` answer.
NOT_HAPPENED = NotHappened()


def _is_probe_answer(v: Any) -> bool:
    return isinstance(v, (Happened, NotHappened))
