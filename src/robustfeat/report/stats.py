"""Statistics over seeds and the improvement rule.

A cell's number is the mean over its seeds with the sample standard deviation (ddof = 1) and
the seed count. A difference between two cells is an improvement only when it exceeds the
seeds' spread: the means differ by more than the sum of the two standard deviations (the
mean ± std intervals do not overlap), and each side has at least two seeds -- with one seed
the spread is unknown and nothing is called an improvement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from ..errors import ConfigError

Verdict = Literal["better", "worse", "within_spread", "unknown"]
MARKERS: dict[Verdict, str] = {"better": "▲", "worse": "▼", "within_spread": "≈", "unknown": "?"}
# in place of ▲ where the compared attack is one the cell masks (tables/common.py: masked_column)
MASKED = "⚠"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample std; None with fewer than two values
    n: int

    def scaled(self, factor: float) -> Stat:
        return Stat(
            self.mean * factor, None if self.std is None else self.std * abs(factor), self.n
        )

    def complement(self) -> Stat:
        """1 - x (accuracy <-> error): same spread."""
        return Stat(1.0 - self.mean, self.std, self.n)


def summarize(values: Iterable[float | None]) -> Stat | None:
    """Mean, sample std and count of the finite values (None when there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Stat(mean, std, len(xs))


def compare(a: Stat | None, b: Stat | None, higher_is_better: bool = True) -> Verdict:
    """The improvement rule: is ``a`` better / worse than ``b`` beyond the seeds' spread?

    ``better`` / ``worse`` only when both have >= 2 seeds and |mean_a - mean_b| > std_a + std_b;
    ``within_spread`` otherwise; ``unknown`` when either side is missing or has one seed.
    """
    if a is None or b is None or a.std is None or b.std is None:
        return "unknown"
    diff = a.mean - b.mean if higher_is_better else b.mean - a.mean
    if abs(diff) <= a.std + b.std:
        return "within_spread"
    return "better" if diff > 0 else "worse"


def parse_eps(value: float | int | str) -> float:
    """An eps from YAML: a number or a fraction string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"eps must be a number or 'a/b', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError) as err:
        raise ConfigError(f"eps must be a number or 'a/b', got {value!r}") from err


def format_stat(stat: Stat | None, digits: int = 2, scale: float = 100.0) -> str:
    """``mean ± std`` in percent (``-`` when missing; no ± with one seed)."""
    if stat is None:
        return "–"
    s = stat.scaled(scale)
    if s.std is None:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"
