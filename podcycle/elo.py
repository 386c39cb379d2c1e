"""Match statistics as fishtest computes them (server/fishtest/stats/stat_util.py, LLRcalc.py):
Elo from a score, its 95% interval from trinomial (L, D, W) or pentanomial (game pairs) results,
and the generalized SPRT log-likelihood ratio for logistic Elo bounds.

Results are frequency lists of length 3 ([losses, draws, wins]) or 5 (game pairs whose two
scores sum to 0, 0.5, 1, 1.5, 2: [LL, LD, LW+DD, DW, WW]), always from the point of view of
the engine under test. Pure Python (no scipy): the root finding is a bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from podcycle.errors import ConfigError

EPSILON = 1e-3  # fishtest's regularisation of empty bins and clamp of the score


def elo_to_score(elo: float) -> float:
    """Expected score for a logistic Elo difference (fishtest's L)."""
    return 1 / (1 + 10 ** (-elo / 400))


def score_to_elo(score: float) -> float:
    """Logistic Elo difference for an expected score, clamped like fishtest's elo()."""
    score = min(max(score, EPSILON), 1 - EPSILON)
    return -400 * math.log10(1 / score - 1)


def regularize(results: list[float]) -> list[float]:
    """Empty bins get a tiny count so that logs and variances stay defined (fishtest)."""
    return [EPSILON if r == 0 else r for r in results]


def _check(results: list[float]) -> list[float]:
    if len(results) not in (3, 5) or any(r < 0 for r in results):
        raise ValueError(f"results must be 3 (L, D, W) or 5 (pentanomial) counts: {results}")
    return [float(r) for r in results]


def moments(results: list[float]) -> tuple[float, float, float]:
    """(games, per-game mean score, per-game variance) of 3- or 5-bin results
    (fishtest stat_util.stats)."""
    count = len(results)
    pairs = sum(results)
    games = pairs * (count - 1) / 2
    mu = sum(r * (i / 2) for i, r in enumerate(results)) / games
    mu_per_unit = (count - 1) / 2 * mu
    var = sum(r * (i / 2 - mu_per_unit) ** 2 for i, r in enumerate(results)) / games
    return games, mu, var


@dataclass(frozen=True)
class EloEstimate:
    elo: float
    error: float | None  # half-width of the 95% interval; None when it has one end only
    los: float  # likelihood of superiority
    score: float
    # A score of exactly 1 (every unit won in full) or 0 has an interval with one end only,
    # `bound`: the low end (side "low": `high` is then None, no bound) or the high end; `elo`
    # is then fishtest's clamp (+/-1199.8).
    bound: float | None = None
    side: str | None = None

    @property
    def low(self) -> float | None:
        if self.side is not None:
            return self.bound if self.side == "low" else None
        return self.elo - self.error

    @property
    def high(self) -> float | None:
        if self.side is not None:
            return self.bound if self.side == "high" else None
        return self.elo + self.error


# Each tail of the 95% interval.
TAIL = 0.025


def elo_estimate(results: list[float]) -> EloEstimate:
    """Elo and its 95% interval (fishtest stat_util.get_elo). A score of exactly 1 or 0 has
    no spread, and fishtest's interval collapses onto its clamp (20 pairs all won: +1199.8
    +/- 128): the interval's one end is then exact instead (one_sided_bound)."""
    results = _check(results)
    units = sum(results)
    if units and units in (results[0], results[-1]):
        won = results[-1] == units
        bound = one_sided_bound(units)
        return EloEstimate(elo=score_to_elo(1.0 if won else 0.0), error=None,
                           los=1 - 0.5 ** units if won else 0.5 ** units,
                           score=1.0 if won else 0.0, bound=bound if won else -bound,
                           side="low" if won else "high")
    results = regularize(results)
    games, mu, var = moments(results)
    stdev = math.sqrt(var)
    z = NormalDist().inv_cdf(1 - TAIL)
    spread = stdev / math.sqrt(games)
    error = (score_to_elo(mu + z * spread) - score_to_elo(mu - z * spread)) / 2
    los = NormalDist().cdf((mu - 0.5) / spread) if spread > 0 else float(mu > 0.5)
    return EloEstimate(elo=score_to_elo(mu), error=error, los=los, score=mu)


def one_sided_bound(units: float) -> float:
    """The Elo that `units` units (game pairs, or games when unpaired) all won in full
    prove at 97.5% (the 95% interval's lower end). The chance p of winning a unit in full
    is then at least TAIL^(1/n), the Clopper-Pearson bound for n successes in n trials, and
    the expected score at least p (a unit not won in full scores 0 or more). 20 pairs:
    p >= 0.832, +277 Elo; 2 pairs prove nothing (-291). Its LOS, 1 - 0.5^n: with a score
    of 0.5 or less, a unit is won in full at most half of the time."""
    return score_to_elo(TAIL ** (1 / units))


def signed(value: float, digits: int = 1) -> str:
    """'+12.3', '-4.0', and '+0.0' for anything that rounds to zero: an even score's Elo is
    -0.0 (-400 log10(1)), which printed as 'Elo -0.0 ± 125.8', a loss that never was."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def elo_text(elo: float, low: float | None, high: float | None, digits: int = 1) -> str:
    """'+190.6 ± 13.9', or for an interval with one end, '> +277.4' (every unit won) or
    '< -277.4' (every unit lost)."""
    if high is None and low is not None:
        return f"> {signed(low, digits)}"
    if low is None and high is not None:
        return f"< {signed(high, digits)}"
    return f"{signed(elo, digits)} ± {high - elo:.{digits}f}"


def summary_elo_text(summary: dict[str, Any], digits: int = 1) -> str:
    """'+190.6 ± 13.9', or '> +277.4' when every game pair was won (elo.elo_text)."""
    return elo_text(summary["elo"], summary.get("elo_low"), summary.get("elo_high"), digits)


def interval_text(summary: dict[str, Any]) -> str:
    """The 95% interval, or its one end and why there is no other."""
    low, high = summary.get("elo_low"), summary.get("elo_high")
    if low is not None and high is not None:
        return f"95% interval {signed(low)} .. {signed(high)}"
    unit = "game pair" if summary.get("pentanomial") else "game"
    units = sum(summary["pentanomial"]) if summary.get("pentanomial") else summary["games"]
    return (f"the 95% interval's {'low' if high is None else 'high'} end: "
            f"{'every' if units > 1 else 'the'} {unit} {'won' if high is None else 'lost'}"
            f", so it has no {'upper' if high is None else 'lower'} end")


# -- SPRT ------------------------------------------------------------------------------------
def _pdf(results: list[float]) -> tuple[float, list[tuple[float, float]]]:
    results = regularize(results)
    n = sum(results)
    count = len(results)
    return n, [(i / (count - 1), r / n) for i, r in enumerate(results)]


def _secular(pdf: list[tuple[float, float]]) -> float:
    """The root x of sum_i p_i a_i / (1 + x a_i) = 0 between -1/max(a) and -1/min(a)."""
    values = [a for a, _ in pdf]
    low, high = -1 / max(values), -1 / min(values)
    if min(values) * max(values) >= 0:
        raise ValueError("the secular equation needs outcomes on both sides of the score")

    def f(x: float) -> float:
        return sum(p * a / (1 + x * a) for a, p in pdf)

    low, high = low + 1e-12, high - 1e-12
    # f decreases from +inf to -inf across the interval.
    for _ in range(200):
        mid = (low + high) / 2
        if f(mid) > 0:
            low = mid
        else:
            high = mid
        if high - low < 1e-15:
            break
    return (low + high) / 2


def _mle_expected(pdf: list[tuple[float, float]], s: float) -> list[tuple[float, float]]:
    """The distribution closest (maximum likelihood) to pdf whose expectation is s
    (fishtest LLRcalc.MLE_expected)."""
    x = _secular([(a - s, p) for a, p in pdf])
    return [(a, p / (1 + x * (a - s))) for a, p in pdf]


def llr_logistic(elo0: float, elo1: float, results: list[float]) -> float:
    """Generalized log-likelihood ratio of H1 (elo1) against H0 (elo0), logistic Elo
    (fishtest LLRcalc.LLR_logistic)."""
    n, pdf = _pdf(_check(results))
    s0, s1 = elo_to_score(elo0), elo_to_score(elo1)
    pdf0, pdf1 = _mle_expected(pdf, s0), _mle_expected(pdf, s1)
    return n * sum(p * (math.log(p1) - math.log(p0))
                   for (_, p), (_, p0), (_, p1) in zip(pdf, pdf0, pdf1, strict=True))


@dataclass(frozen=True)
class Sprt:
    elo0: float = 0.0
    elo1: float = 10.0
    alpha: float = 0.05
    beta: float = 0.05

    @property
    def lower(self) -> float:
        """Accept H0 (no gain of elo1) when the LLR falls to this: log(beta / (1 - alpha))."""
        return math.log(self.beta / (1 - self.alpha))

    @property
    def upper(self) -> float:
        """Accept H1 (a gain of elo1) when the LLR rises to this: log((1 - beta) / alpha)."""
        return math.log((1 - self.beta) / self.alpha)

    def llr(self, results: list[float]) -> float:
        return llr_logistic(self.elo0, self.elo1, results) if sum(results) else 0.0

    def verdict(self, llr: float) -> str:
        if llr >= self.upper:
            return "H1"
        if llr <= self.lower:
            return "H0"
        return "continue"

    def report(self, results: list[float]) -> dict[str, Any]:
        llr = self.llr(results)
        return {"elo0": self.elo0, "elo1": self.elo1, "alpha": self.alpha, "beta": self.beta,
                "llr": round(llr, 4), "lower": round(self.lower, 4),
                "upper": round(self.upper, 4), "verdict": self.verdict(llr)}


VERDICT_TEXT = {"H1": "H1 accepted: the model is stronger by about elo1 (pass)",
                "H0": "H0 accepted: no gain of elo1 (fail)",
                "continue": "undecided: more games needed"}


SPRT_MAX_ELO = 1000  # a score of 99.7%: bounds past it test nothing a match can show


def parse_sprt(text: str) -> Sprt:
    """'elo0=0,elo1=10[,alpha=0.05,beta=0.05]' → Sprt, or a ConfigError naming --sprt."""
    example = "e.g. --sprt elo0=0,elo1=10 or --sprt elo0=0,elo1=10,alpha=0.05,beta=0.05"
    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("elo0", "elo1", "alpha", "beta"):
            raise ConfigError(f"--sprt: cannot read {part!r} (keys: elo0, elo1, alpha, beta)",
                              example)
        if key in values:
            raise ConfigError(f"--sprt: {key} is given twice", example)
        try:
            values[key] = float(value)
        except ValueError:
            raise ConfigError(f"--sprt: {key} must be a number, got {value!r}",
                              example) from None
        if not math.isfinite(values[key]):
            raise ConfigError(f"--sprt: {key} must be finite, got {value!r}", example)
    if "elo0" not in values or "elo1" not in values:
        raise ConfigError("--sprt needs both elo0 and elo1", example)
    for key in ("elo0", "elo1"):  # past it a score rounds to 0 or 1: the LLR is undefined
        if abs(values[key]) > SPRT_MAX_ELO:
            raise ConfigError(f"--sprt: {key} must be from -{SPRT_MAX_ELO} to {SPRT_MAX_ELO}, "
                              f"got {values[key]:g}", example)
    sprt = Sprt(**values)
    if sprt.elo0 >= sprt.elo1:
        raise ConfigError(f"--sprt: elo0 ({sprt.elo0:g}) must be below elo1 ({sprt.elo1:g})",
                          example)
    for name in ("alpha", "beta"):
        if not 0 < getattr(sprt, name) < 0.5:
            raise ConfigError(f"--sprt: {name} must be between 0 and 0.5, got "
                              f"{getattr(sprt, name):g}", example)
    return sprt


# -- game pairs ------------------------------------------------------------------------------
def pair_bin(first: float, second: float) -> int:
    """The pentanomial bin of a game pair from its two game scores (each 0, 0.5 or 1, for the
    engine under test): 0 = LL, 1 = LD/DL, 2 = WL/LW/DD, 3 = WD/DW, 4 = WW."""
    for score in (first, second):
        if score not in (0, 0.5, 1):
            raise ValueError(f"a game score is 0, 0.5 or 1, not {score!r}")
    return int(round(2 * (first + second)))


def pentanomial(pairs: list[tuple[float, float]]) -> list[int]:
    bins = [0] * 5
    for first, second in pairs:
        bins[pair_bin(first, second)] += 1
    return bins


def trinomial(scores: list[float]) -> list[int]:
    """[losses, draws, wins] of game scores."""
    return [sum(1 for s in scores if s == value) for value in (0, 0.5, 1)]
