"""Per-client timing: the stamps of train replies turned into the overhead outside the optimizer steps."""

from __future__ import annotations

import pytest

from fedtalos.federation.timing import ACTOR, TIME_END, TIME_START, TIME_STEPS, Delivery, client_stamps, overhead


def _delivery(actor: int, start: float, end: float, steps: float, arrived: float, accept: float) -> Delivery:
    return Delivery({TIME_START: start, TIME_END: end, TIME_STEPS: steps, ACTOR: actor}, arrived, accept)


def test_waiting_for_a_busy_actor_is_not_overhead():
    # pushed at t=100; actor 1 serves client 0 (100.5–102.5, 1.5 s of steps) then client 1 (102.7–104.7)
    deliveries = {
        0: _delivery(1, 100.5, 102.5, 1.5, 102.6, 0.01),
        1: _delivery(1, 102.7, 104.7, 1.5, 104.9, 0.03),
    }
    got = overhead(100.0, deliveries, clocks_shared=True)
    assert got["client_delivery_s"] == pytest.approx((0.5 + 0.2) / 2)  # client 1 waits from 102.5, not from 100
    assert got["client_setup_s"] == pytest.approx(0.5)
    assert got["client_reply_s"] == pytest.approx((0.1 + 0.2) / 2)
    assert got["client_accept_s"] == pytest.approx(0.02)
    assert got["client_steps_s"] == pytest.approx(1.5)
    assert got["client_overhead_s"] == pytest.approx(0.35 + 0.5 + 0.15 + 0.02)


def test_other_clocks_report_only_what_one_clock_measures():
    got = overhead(0.0, {0: _delivery(1, 5e9, 5e9 + 2, 1.0, 3.0, 0.1)}, clocks_shared=False)
    assert set(got) == {"client_setup_s", "client_accept_s", "client_steps_s", "client_overhead_s"}
    assert got["client_overhead_s"] == pytest.approx(1.1)


def test_replies_without_usable_stamps_are_left_out():
    bad = Delivery({TIME_START: "soon", TIME_END: 1.0, TIME_STEPS: 0.5, ACTOR: 1}, 2.0, 0.0)
    assert overhead(0.0, {0: bad}, clocks_shared=True) == {}
    stamps = client_stamps(started=10.0, steps_s=0.25)
    assert stamps[TIME_STEPS] == 0.25 and stamps[TIME_END] > 10.0 and isinstance(stamps[ACTOR], int)


def test_the_weights_and_upload_parts_of_setup_are_reported_beside_it_not_added_again():
    deliveries = {
        pid: Delivery(
            {**client_stamps(10.0, 0.5, weights_s=0.02 * (pid + 1), upload_s=0.01), TIME_END: 11.0}, 11.1, 0.0
        )
        for pid in range(2)
    }
    got = overhead(9.0, deliveries, clocks_shared=True)
    assert got["client_weights_s"] == pytest.approx(0.03) and got["client_upload_s"] == pytest.approx(0.01)
    assert got["client_setup_s"] == pytest.approx(0.5)  # end − start − steps, the parts inside it
    parts = ("delivery_s", "setup_s", "reply_s", "accept_s")
    assert got["client_overhead_s"] == pytest.approx(sum(got[f"client_{k}"] for k in parts))
