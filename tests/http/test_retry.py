"""The retry decision as a table: (what the attempt came to) x (idempotent or not) x
(which attempt, how long so far) -> retry after a delay / raise / uncertain / new token.

Every row is pure data: no server, no clock, no random draw (the jitter is fixed), so a
rule changed by mistake fails here by name.
"""

from __future__ import annotations

import pytest

from mirakl_cancel._http.backoff import exponential, full_jitter
from mirakl_cancel._http.retry import (
    REFUSED_BEFORE_PROCESSING,
    Attempt,
    Decision,
    Failure,
    RetryPolicy,
    Verdict,
    decide,
    resend_safe,
)

POLICY = RetryPolicy(max_attempts=4, max_time=100.0, base_delay=1.0, max_delay=8.0,
                     max_retry_after=30.0)
OPTED_IN = RetryPolicy(max_attempts=4, max_time=100.0, base_delay=1.0, max_delay=8.0,
                       max_retry_after=30.0, retry_uncertain_posts=True)

RETRY, RAISE, UNCERTAIN, REFRESH = (Verdict.RETRY, Verdict.RAISE, Verdict.UNCERTAIN,
                                    Verdict.REFRESH_TOKEN)


def answer(status: int, retry_after: float | None = None) -> Attempt:
    return Attempt(Failure.ANSWER, status, retry_after)


NOT_SENT = Attempt(Failure.NOT_SENT)
BROKEN = Attempt(Failure.BROKEN)
UNFORESEEN = Attempt(Failure.UNFORESEEN)
UNREADABLE = Attempt(Failure.UNREADABLE, 202)

# (attempt, idempotent, verdict) on the first try, default policy: which rule applies.
VERDICTS = [
    # never left: always safe to try again
    (NOT_SENT, True, RETRY),
    (NOT_SENT, False, RETRY),
    # broke after it may have left: a read retries, a cancel is UNCERTAIN
    (BROKEN, True, RETRY),
    (BROKEN, False, UNCERTAIN),
    (UNFORESEEN, True, RAISE),
    (UNFORESEEN, False, UNCERTAIN),
    # answered, body unusable: processed; a cancel is never resent
    (UNREADABLE, True, RAISE),
    (UNREADABLE, False, UNCERTAIN),
    # a success status the caller does not expect: processed
    (answer(200), True, RAISE),
    (answer(204), False, UNCERTAIN),
    # refused before processing
    (answer(401), True, REFRESH),
    (answer(401), False, REFRESH),
    (answer(403), False, RAISE),
    (answer(429), False, RETRY),
    (answer(429), True, RETRY),
    (answer(503), False, RETRY),
    (answer(503), True, RETRY),
    # other server failures: the answer of a processed request may be lost
    (answer(500), True, RETRY),
    (answer(500), False, UNCERTAIN),
    (answer(502), False, UNCERTAIN),
    (answer(504), True, RETRY),
    # the API refused the content: trying again gives the same answer
    (answer(400), False, RAISE),
    (answer(404), True, RAISE),
    (answer(409), False, RAISE),
    (answer(302), True, RAISE),
]


@pytest.mark.parametrize(("attempt", "idempotent", "verdict"), VERDICTS)
def test_the_verdict_of_each_attempt(attempt: Attempt, idempotent: bool,
                                     verdict: Verdict) -> None:
    decision = decide(attempt, idempotent=idempotent, tries=1, elapsed=0.0, policy=POLICY,
                      jitter=0.5)
    assert decision.verdict is verdict


@pytest.mark.parametrize(("attempt", "verdict"), [
    (BROKEN, RETRY), (UNFORESEEN, RETRY), (answer(500), RETRY), (answer(502), RETRY),
    (UNREADABLE, UNCERTAIN), (answer(202), UNCERTAIN), (answer(400), RAISE)])
def test_opting_into_resending_uncertain_posts(attempt: Attempt, verdict: Verdict) -> None:
    """Only a lost answer is resent: a processed cancel (a success status) never is."""
    decision = decide(attempt, idempotent=False, tries=1, elapsed=0.0, policy=OPTED_IN)
    assert decision.verdict is verdict


# (attempt, tries, elapsed, refreshed, ready_in) -> the full decision (jitter 0.5).
DECISIONS = [
    # backoff: base, doubled each try, capped at max_delay, then half of it (the jitter)
    (NOT_SENT, 1, 0.0, False, 0.0, Decision(RETRY, 0.5, 0.5)),
    (NOT_SENT, 2, 0.0, False, 0.0, Decision(RETRY, 1.0, 1.0)),
    (NOT_SENT, 3, 0.0, False, 0.0, Decision(RETRY, 2.0, 2.0)),
    # the attempts are spent
    (NOT_SENT, 4, 0.0, False, 0.0, Decision(RAISE, 4.0, 4.0)),
    # the time is spent (elapsed + the wait would pass max_time)
    (NOT_SENT, 1, 99.8, False, 0.0, Decision(RAISE, 0.5, 0.5)),
    # a read waits for its resource's ceiling too, and that counts against max_time
    (answer(500), 1, 0.0, False, 42.0, Decision(RETRY, 0.5, 42.0)),
    (answer(500), 1, 60.0, False, 42.0, Decision(RAISE, 0.5, 42.0)),
    # Retry-After wins over a shorter backoff; a 429 pauses the whole client
    (answer(503, 7.0), 1, 0.0, False, 0.0, Decision(RETRY, 7.0, 7.0)),
    (answer(503, 0.1), 1, 0.0, False, 0.0, Decision(RETRY, 0.5, 0.5)),
    (answer(429, 7.0), 1, 0.0, False, 0.0, Decision(RETRY, 7.0, 7.0, pause=True)),
    # ... paused even when giving up: past max_retry_after, or out of attempts
    (answer(429, 31.0), 1, 0.0, False, 0.0, Decision(RAISE, 31.0, 31.0, pause=True)),
    (answer(429), 4, 0.0, False, 0.0, Decision(RAISE, 4.0, 4.0, pause=True)),
    (answer(503, 31.0), 1, 0.0, False, 0.0, Decision(RAISE, 31.0, 31.0)),
    # the token is renewed once; a second 401 is raised
    (answer(401), 1, 0.0, False, 0.0, Decision(REFRESH)),
    (answer(401), 1, 0.0, True, 0.0, Decision(RAISE)),
]


@pytest.mark.parametrize(("attempt", "tries", "elapsed", "refreshed", "ready_in", "expected"),
                         DECISIONS)
def test_the_bounds_and_the_delays(attempt: Attempt, tries: int, elapsed: float,
                                   refreshed: bool, ready_in: float,
                                   expected: Decision) -> None:
    decision = decide(attempt, idempotent=True, tries=tries, elapsed=elapsed, policy=POLICY,
                      refreshed=refreshed, jitter=0.5, ready_in=ready_in)
    assert decision == expected


def test_one_attempt_means_no_retry() -> None:
    decision = decide(NOT_SENT, idempotent=True, tries=1, elapsed=0.0,
                      policy=RetryPolicy(max_attempts=1))
    assert decision.verdict is RAISE


@pytest.mark.parametrize(("attempt", "safe"), [
    (NOT_SENT, True),
    *((answer(status), True) for status in sorted(REFUSED_BEFORE_PROCESSING)),
    (answer(400), False), (answer(404), False), (answer(500), False), (answer(202), False),
    (BROKEN, False), (UNFORESEEN, False), (Attempt(Failure.UNREADABLE, 503), False),
])
def test_resend_safe_only_when_certainly_not_processed(attempt: Attempt, safe: bool) -> None:
    assert resend_safe(attempt) is safe


@pytest.mark.parametrize(("failures", "delay"), [
    (0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (10_000, 10.0)])
def test_one_exponential_backoff(failures: int, delay: float) -> None:
    assert exponential(failures, 1.0, 10.0) == delay
    assert full_jitter(delay, 0.25) == delay / 4
    assert full_jitter(delay, 0.0) == 0.0


def test_the_backoff_stays_finite_for_a_huge_base() -> None:
    assert exponential(10**9, 1e300, float("inf")) < float("inf")
    assert exponential(10**9, 60.0, 300.0) == 300.0
