"""The runtime's thread policy (runtime.cpu): all cores spinning on an idle machine, the free cores and no
spinning on a busy one, explicit choices kept, and the choice reported."""
from __future__ import annotations

from discodiff.runtime import cpu


def test_idle_machine_gets_every_core_spinning(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    p = cpu.cpu_policy(busy=0)
    assert (p.threads, p.spinning) == (8, True) and "alone" in p.reason


def test_busy_machine_gets_the_free_cores_without_spinning(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    assert (cpu.cpu_policy(busy=3).threads, cpu.cpu_policy(busy=3).spinning) == (5, False)
    assert cpu.cpu_policy(busy=20).threads == 1                           # never fewer than one
    assert "shared" in cpu.cpu_policy(busy=2).describe()["cpu_policy"]


def test_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    assert cpu.cpu_policy(threads=2, spin="on", busy=5) == cpu.CpuPolicy(2, True, cpu.cpu_policy(2, "on", busy=5).reason)
    assert cpu.cpu_policy(spin="off", busy=0).spinning is False
    assert cpu.cpu_policy(spin="on", busy=4).spinning is True


def test_busy_elsewhere_reads_this_machine():
    n = cpu.busy_elsewhere(samples=3, interval=0.001)
    assert n >= 0 and n == int(n)


def test_explicit_spinning_uses_every_core_even_on_a_busy_machine(monkeypatch):
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    assert cpu.cpu_policy(spin="on", busy=4).threads == 8 and cpu.cpu_policy(spin="off", busy=4).threads == 8


def test_this_process_own_busy_threads_are_not_another_process():
    """A pool of ours still spinning (torch's OpenMP after a step, a BLAS call) must not read as a busy machine."""
    import threading

    import numpy as np

    stop = threading.Event()

    def work():
        a = np.ones((200, 200))
        while not stop.is_set():
            a @ a                      # releases the GIL: the thread stays runnable

    base = cpu.busy_elsewhere()        # whatever else runs on this machine now
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert cpu._own_running() >= 2
        assert cpu.busy_elsewhere() < base + 2      # counted as others, our two threads would add 2
    finally:
        stop.set()
        for t in threads:
            t.join()
