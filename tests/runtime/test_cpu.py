"""The runtime's thread policy (runtime.cpu): all cores spinning on an idle machine, the free cores and no
spinning on a busy one, explicit choices kept, and the choice reported."""
from __future__ import annotations

from discodiff.runtime import cpu


def test_idle_machine_gets_every_core_spinning(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    p = cpu.plan_cpu(busy=0)
    assert (p.threads, p.spinning) == (8, True) and "alone" in p.reason


def test_busy_machine_gets_the_free_cores_without_spinning(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    assert (cpu.plan_cpu(busy=3).threads, cpu.plan_cpu(busy=3).spinning) == (5, False)
    assert cpu.plan_cpu(busy=20).threads == 1                           # never fewer than one
    assert "shared" in cpu.plan_cpu(busy=2).describe()["cpu_policy"]


def test_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    assert cpu.plan_cpu(threads=2, spin="on", busy=5) == cpu.CpuPlan(2, True, cpu.plan_cpu(2, "on", busy=5).reason)
    assert cpu.plan_cpu(spin="off", busy=0).spinning is False
    assert cpu.plan_cpu(spin="on", busy=4).spinning is True


def test_busy_elsewhere_reads_this_machine():
    n = cpu.busy_elsewhere(samples=3, interval=0.001)
    assert n >= 0 and n == int(n)
