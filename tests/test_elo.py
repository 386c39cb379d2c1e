"""Elo, its 95% interval and the SPRT LLR against published worked values.

Expected numbers come from fastchess's unit tests, which implement fishtest's formulas
(github.com/Disservin/fastchess app/tests/elo_test.cpp and app/tests/sprt_test.cpp; their
`Stats` counts map onto our bins as commented). fastchess checks them with
doctest::Approx(x).epsilon(0.01), a 1% relative tolerance; we use the same precision. The SPRT
bounds are fishtest's: log(beta/(1-alpha)) and log((1-beta)/alpha), shown as (-2.94, 2.94) on
every fishtest test page with alpha = beta = 0.05.
"""

from __future__ import annotations

import math

import pytest

from podcycle.elo import (
    Sprt,
    elo_estimate,
    elo_text,
    elo_to_score,
    interval_text,
    llr_logistic,
    pair_bin,
    parse_sprt,
    pentanomial,
    score_to_elo,
    summary_elo_text,
    trinomial,
)
from podcycle.errors import ConfigError


def fastchess_penta(ll: int, ld: int, wl: int, dd: int, wd: int, ww: int) -> list[int]:
    """fastchess's Stats(ll, ld, wl, dd, wd, ww) as fishtest's 5 bins (WL and DD share one)."""
    return [ll, ld, wl + dd, wd, ww]


def fastchess_wdl(wins: int, losses: int, draws: int) -> list[int]:
    """fastchess's Stats(wins, losses, draws) as fishtest's [L, D, W]."""
    return [losses, draws, wins]


def close(value: float, expected: float) -> bool:
    return value == pytest.approx(expected, rel=0.01, abs=0.005)


@pytest.mark.parametrize(("results", "elo", "error", "los"), [
    # elo_test.cpp "EloWDL 2": Stats(136, 96, 111): diff 40.70, error 30.43, LOS 99.60 %
    (fastchess_wdl(136, 96, 111), 40.70, 30.43, 0.9960),
    # "EloPentanomial 1": Stats(34, 54, 31, 32, 64, 75): 55.58 +/- 27.65, LOS 100.00 %
    (fastchess_penta(34, 54, 31, 32, 64, 75), 55.58, 27.65, 1.0),
    # "EloPentanomial 2": Stats(332, 433, 457, 41, 333, 334): -8.64 +/- 10.33, LOS 5.05 %
    (fastchess_penta(332, 433, 457, 41, 333, 334), -8.64, 10.33, 0.0505),
    # "EloPentanomial 3": Stats(7895, 8757, 5485, 200, 568, 9999): -21.04 +/- 2.95
    (fastchess_penta(7895, 8757, 5485, 200, 568, 9999), -21.04, 2.95, None),
])
def test_elo_and_interval_match_published_values(results, elo, error, los) -> None:
    estimate = elo_estimate(results)
    assert close(estimate.elo, elo), estimate
    assert close(estimate.error, error), estimate
    assert estimate.low == pytest.approx(estimate.elo - estimate.error)
    assert estimate.high == pytest.approx(estimate.elo + estimate.error)
    if los is not None:
        assert estimate.los == pytest.approx(los, abs=0.0001)


@pytest.mark.parametrize(("results", "elo0", "elo1", "llr"), [
    # sprt_test.cpp "logistic trinomial 1": Stats(21404, 21184, 40708), [0.5, 2.5]: -1.57
    (fastchess_wdl(21404, 21184, 40708), 0.5, 2.5, -1.57),
    # "logistic trinomial 2": Stats(57433, 57030, 106593), [0, 2]: -2.59
    (fastchess_wdl(57433, 57030, 106593), 0, 2, -2.59),
    # "logistic pentanomial 1": Stats(223, 9863, 20279, 1000, 10037, 246), [0.5, 2.5]: -3.07
    (fastchess_penta(223, 9863, 20279, 1000, 10037, 246), 0.5, 2.5, -3.07),
    # "logistic pentanomial 2": Stats(871, 26175, 55003, 980, 26678, 821), [0, 2]: -4.98
    (fastchess_penta(871, 26175, 55003, 980, 26678, 821), 0, 2, -4.98),
])
def test_llr_matches_published_values(results, elo0, elo1, llr) -> None:
    assert close(llr_logistic(elo0, elo1, results), llr)
    assert close(Sprt(elo0=elo0, elo1=elo1).llr(results), llr)


def test_sprt_bounds_and_verdicts() -> None:
    sprt = Sprt(elo0=0, elo1=10)
    # fishtest test pages show "LLR: x (-2.94,2.94)" for alpha = beta = 0.05.
    assert round(sprt.lower, 2) == -2.94 and round(sprt.upper, 2) == 2.94
    assert sprt.lower == pytest.approx(math.log(0.05 / 0.95))
    strict = Sprt(elo0=0, elo1=10, alpha=0.01, beta=0.1)
    assert strict.lower == pytest.approx(math.log(0.1 / 0.99))
    assert strict.upper == pytest.approx(math.log(0.9 / 0.01))
    assert sprt.verdict(3.0) == "H1" and sprt.verdict(-3.0) == "H0"
    assert sprt.verdict(0.0) == "continue"
    assert sprt.llr([0, 0, 0, 0, 0]) == 0.0
    # Many won pairs pass a [0, 10] test; many lost pairs fail it.
    assert sprt.report([0, 4, 20, 60, 120])["verdict"] == "H1"
    assert sprt.report([120, 60, 20, 4, 0])["verdict"] == "H0"


def test_parse_sprt() -> None:
    assert parse_sprt("elo0=0,elo1=10") == Sprt(0, 10, 0.05, 0.05)
    assert parse_sprt("elo0=-2, elo1=3, alpha=0.01, beta=0.1") == Sprt(-2, 3, 0.01, 0.1)
    for bad in ("elo0=0", "elo1=10", "elo0=10,elo1=0", "elo0=x,elo1=1", "foo=1,elo0=0,elo1=1",
                "elo0=0,elo1=5,alpha=0.7", "elo0=0,elo1=5,beta=0", "elo0", "elo0=nan,elo1=1",
                # Past 1000 Elo a score rounds to 0 or 1: it failed mid-match on a
                # ZeroDivisionError; a key given twice kept the last value silently.
                "elo0=0,elo1=1e308", "elo0=-1e6,elo1=1e6", "elo0=5990,elo1=6000",
                "elo0=0,elo1=10,alpha=0.05,alpha=0.4"):
        with pytest.raises(ConfigError) as caught:
            parse_sprt(bad)
        assert "--sprt" in str(caught.value)


def test_score_elo_round_trip_and_clamp() -> None:
    assert score_to_elo(0.5) == 0
    for elo in (-300, -10, 0, 10, 300):
        assert score_to_elo(elo_to_score(elo)) == pytest.approx(elo)
    assert score_to_elo(1.0) == score_to_elo(0.999) and score_to_elo(0.0) < -1000


def test_pentanomial_pairing() -> None:
    # Each opening is played twice with colours swapped; the two game scores of the engine
    # under test make one of five bins.
    assert [pair_bin(a, b) for a, b in [(0, 0), (0, 0.5), (0.5, 0), (1, 0), (0, 1), (0.5, 0.5),
                                        (1, 0.5), (0.5, 1), (1, 1)]] == [0, 1, 1, 2, 2, 2, 3, 3, 4]
    pairs = [(1, 1), (1, 0), (0.5, 0.5), (0.5, 1), (0, 0.5), (0, 0)]
    assert pentanomial(pairs) == [1, 1, 2, 1, 1]
    scores = [s for pair in pairs for s in pair]
    assert trinomial(scores) == [4, 4, 4]
    with pytest.raises(ValueError):
        pair_bin(2, 0)
    # The same games judged by pairs have the same mean score as game by game, and a
    # self-match of a deterministic engine (every pair W+L) gives an interval around 0.
    assert elo_estimate(pentanomial(pairs)).score == pytest.approx(sum(scores) / len(scores))
    mirrored = elo_estimate(pentanomial([(1, 0)] * 20))
    assert mirrored.low <= 0 <= mirrored.high and mirrored.elo == pytest.approx(0, abs=1e-9)
    # Winning every pair: the interval lies above 0.
    assert elo_estimate(pentanomial([(1, 1)] * 20)).low > 0


@pytest.mark.parametrize(("results", "proportion"), [
    # Clopper-Pearson 95% intervals for n successes in n trials, [(alpha/2)^(1/n), 1], as
    # published in binomial tables: 10 of 10 gives 0.6915 .. 1, 20 of 20 gives 0.8316 .. 1.
    ([0, 0, 0, 0, 10], 0.6915), ([0, 0, 10], 0.6915),
    ([0, 0, 0, 0, 20], 0.8316), ([0, 0, 20], 0.8316),
])
def test_a_perfect_score_has_the_exact_bound_as_its_one_end(results, proportion) -> None:
    """Every game pair won: fishtest's interval has no spread left and collapses onto its
    clamp. The match said "Elo +1199.8 ± 128.3 (+1071.5 .. +1328.2)" for 20 pairs all won,
    where those 20 pairs prove about +277 at the 95% interval's low end."""
    estimate = elo_estimate(results)
    assert estimate.low == pytest.approx(score_to_elo(proportion), abs=0.5)
    assert estimate.high is None and estimate.error is None
    assert estimate.los == pytest.approx(1 - 0.5 ** sum(results))
    mirrored = elo_estimate(results[::-1])  # every one lost
    assert mirrored.low is None and mirrored.high == pytest.approx(-estimate.low)
    assert mirrored.los == pytest.approx(0.5 ** sum(results))
    assert elo_text(estimate.elo, estimate.low, estimate.high) == \
        f"> {score_to_elo(proportion):+.1f}"
    assert elo_text(mirrored.elo, mirrored.low, mirrored.high).startswith("< -")


def test_a_perfect_score_over_few_pairs_proves_little_and_says_so() -> None:
    two = elo_estimate([0, 0, 0, 0, 2])  # 4 games won: the low end is below 0
    assert two.low == pytest.approx(score_to_elo(0.025 ** 0.5)) and two.low < 0
    assert elo_text(two.elo, two.low, two.high, 0) == "> -291"
    summary = {"games": 4, "pentanomial": [0, 0, 0, 0, 2], "elo": round(two.elo, 1),
               "elo_low": round(two.low, 1), "elo_high": None}
    assert interval_text(summary) == ("the 95% interval's low end: every game pair won, so it "
                                      "has no upper end")
    assert summary_elo_text(summary) == "> -290.5"
    # Almost perfect keeps fishtest's two-sided interval.
    assert elo_estimate([0, 0, 0, 1, 19]).high is not None


def test_an_even_score_is_plus_zero_never_minus_zero() -> None:
    """An even match (4 games: one won, one lost, two drawn) printed "Elo -0.0 ± 125.8":
    its Elo is -400 log10(1), which is -0.0, and a loss that never was. Anything that rounds
    to zero is +0; a real loss keeps its sign."""
    from podcycle.elo import signed

    even = elo_estimate([1, 2, 1])
    assert even.elo == 0 and elo_text(even.elo, even.low, even.high).startswith("+0.0 ± ")
    assert elo_text(even.elo, even.low, even.high, 0).startswith("+0 ± ")
    assert (signed(-0.04), signed(-0.06), signed(-0.4, 0), signed(-0.6, 0)) == (
        "+0.0", "-0.1", "+0", "-1")
    summary = {"games": 4, "elo": even.elo, "elo_low": -0.04, "elo_high": 0.04}
    assert interval_text(summary) == "95% interval +0.0 .. +0.0"
