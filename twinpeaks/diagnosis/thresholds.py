"""Every limit the diagnosis uses, gathered from the rules that declare them."""

from __future__ import annotations

from typing import Any

from .registry import thresholds as declared
from .rules import REGISTERED  # noqa: F401  (importing the rules registers their thresholds)


class Thresholds:
    """Every threshold the diagnosis uses; pass ``tp.diagnose(run, thresholds=Thresholds(...))`` to change one.

    Each rule declares its own thresholds (name, default, one line):
    :meth:`describe` lists them all. Unknown names are refused. Immutable:
    :meth:`replace` returns a changed copy.

    Example:
        >>> Thresholds(dead_problem=0.9).dead_problem
        0.9
        >>> Thresholds().dead_problem
        0.95
    """

    __slots__ = ("_values",)
    _values: dict[str, float]

    def __init__(self, **overrides: float):
        known = declared()
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; thresholds are {', '.join(known)}")
        values = {name: float(default) for name, (default, _) in known.items()}
        values.update({k: float(v) for k, v in overrides.items()})
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> float:
        try:
            return self._values[name]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(f"no threshold named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Thresholds are immutable: use .replace(name=value)")

    def replace(self, **changes: float) -> Thresholds:
        """A copy with some thresholds changed."""
        return Thresholds(**{**self._values, **changes})

    def as_dict(self) -> dict[str, float]:
        """Every threshold's value by name."""
        return dict(self._values)

    @staticmethod
    def describe() -> dict[str, str]:
        """Every threshold's one-line meaning by name."""
        return {name: doc for name, (_, doc) in declared().items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thresholds) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if v != declared()[k][0]}
        return "Thresholds(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"
