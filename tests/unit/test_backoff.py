"""Retry timing: doubling delays, capped, with jitter that never retries faster than half the nominal."""

from __future__ import annotations

import pytest

from synkler.backoff import backoff


def nominal(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    return min(cap, base * 2 ** (attempt - 1))


def test_the_delay_doubles_with_each_attempt():
    assert [backoff(n, base=1.0, cap=1000, rand=1.0) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]


def test_the_first_retry_waits_the_base_delay():
    assert backoff(1, base=0.5, rand=1.0) == 0.5


def test_the_delay_never_exceeds_the_cap():
    assert backoff(9, base=1.0, cap=300, rand=1.0) == 256
    assert backoff(10, base=1.0, cap=300, rand=1.0) == 300
    assert backoff(100, base=1.0, cap=300, rand=1.0) == 300


def test_a_huge_attempt_number_is_capped_without_overflow():
    assert backoff(10**9, base=2.0, cap=60, rand=1.0) == 60
    assert backoff(10**9, base=2.0, cap=60, rand=0.0) == 30


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_an_attempt_below_one_means_no_delay(attempt):
    assert backoff(attempt, rand=1.0) == 0.0
    assert backoff(attempt) == 0.0


def test_rand_zero_gives_half_the_nominal_delay_and_rand_one_the_full_delay():
    assert backoff(4, base=1.0, rand=0.0) == 4.0
    assert backoff(4, base=1.0, rand=1.0) == 8.0
    assert backoff(4, base=1.0, rand=0.5) == 6.0


def test_the_same_rand_always_gives_the_same_delay():
    delays = {backoff(5, base=0.3, cap=7, rand=0.37) for _ in range(10)}
    assert len(delays) == 1


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 9, 20, 61, 200])
@pytest.mark.parametrize("rand", [0.0, 0.001, 0.25, 0.5, 0.999, 1.0])
def test_jitter_stays_between_half_and_all_of_the_nominal_delay(attempt, rand):
    n = nominal(attempt)
    assert n / 2 <= backoff(attempt, base=1.0, cap=300, rand=rand) <= n


@pytest.mark.parametrize("attempt", [1, 4, 12])
def test_random_jitter_stays_within_bounds_and_varies(attempt):
    n = nominal(attempt, base=0.5, cap=30)
    delays = [backoff(attempt, base=0.5, cap=30) for _ in range(500)]
    assert all(n / 2 <= d <= n for d in delays)
    assert len(set(delays)) > 1


def test_the_delay_never_shrinks_as_attempts_grow_for_a_fixed_rand():
    delays = [backoff(n, base=0.5, cap=30, rand=0.3) for n in range(1, 40)]
    assert delays == sorted(delays)
