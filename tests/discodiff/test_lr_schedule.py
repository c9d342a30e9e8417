"""The stage-1/2 learning-rate schedule: linear warm-up, then constant or cosine decay to 0."""
import math

import pytest

from discodiff.train.loop import _lr


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_is_linear(schedule):
    assert _lr(0, 1000, 1.0, 100, schedule) == pytest.approx(0.01)
    assert _lr(49, 1000, 1.0, 100, schedule) == pytest.approx(0.5)


def test_constant_stays_at_base():
    assert {_lr(s, 1000, 2e-3, 100, "constant") for s in range(100, 1000)} == {2e-3}


def test_cosine_decays_monotonically_to_zero():
    rates = [_lr(s, 1000, 2e-3, 100, "cosine") for s in range(100, 1000)]
    assert rates[0] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[450] == pytest.approx(1e-3, rel=1e-2)         # half way through the decay
    assert rates[-1] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 899 / 900)))
    assert rates[-1] < 1e-7


def test_cli_rejects_an_unknown_schedule():
    from click.testing import CliRunner

    from discodiff.train.cli import command

    res = CliRunner().invoke(command, ["--preset", "toy8-tiny", "--lr-schedule", "linear", "--dry-run"])
    assert res.exit_code == 2 and "linear" in res.output
