"""Sampling noise of a paired difference: what both families' clean bounds discount before they count a
drop (docs/decisions.md D10, D33).

Example:
    >>> paired_excess(2, 0, 100)  # 2 of 100 lost, none gained: within the noise
    0.0
    >>> round(paired_excess(20, 0, 100), 4)  # 20 points, 13.4 of them beyond 1.645 standard errors
    0.1342
"""

from __future__ import annotations

NOISE_Z = 1.645  # a change counts beyond its one-sided 95% paired sampling error only


def paired_excess(lost: int, gained: int, n: int, z: float = NOISE_Z) -> float:
    """``(lost - gained) / n`` shrunk toward zero by ``z`` standard errors of a paired difference
    (``se² = (lost + gained - (lost - gained)²/n) / n²``)."""
    if n == 0:
        return 0.0
    d = (lost - gained) / n
    se = max(0.0, (lost + gained) - (lost - gained) ** 2 / n) ** 0.5 / n
    return max(0.0, abs(d) - z * se) * (1 if d > 0 else -1)
