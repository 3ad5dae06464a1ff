"""What the benchmarks report about a set of timings."""


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile; NaN for no values, so an empty class prints as such instead of failing the run."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]
