"""discodiff-serve when things go wrong, for real (Triton from nvidia-pytriton on free loopback ports):
SIGTERM with a long request in flight ends the process within --exit-timeout (exit 1: the request is cut
off with an error) and leaves no Triton process or workspace behind; a killed Python-backend stub ends
the server with exit 1, so its readiness endpoints stop answering 200; options past their bounds are
refused in one line before any port is bound."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("pytriton", reason="needs the serving extra: pip install -e '.[serve]'")

from tests.runtime.test_serve import infer, inputs_for, logged, start  # noqa: E402

pytestmark = pytest.mark.slow
CORES = os.cpu_count() or 1
EXIT_TIMEOUT = 4
MARGIN = 3.0        # the watch's 0.25 s poll, the interpreter's exit, a loaded machine


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, program name) of the live children of `pid`, from /proc."""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rpartition(")")[2].split()
            argv0 = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] not in "ZX":
            out.append((int(d), os.path.basename(argv0)))
    return out


def triton_of(server: int) -> tuple[int, list[int], Path]:
    """The server's tritonserver, the model's stubs under it, and PyTriton's workspace (from Triton's argv)."""
    (triton,) = [p for p, prog in children(server) if prog == "tritonserver"]
    stubs = [p for p, prog in children(triton) if prog == "triton_python_backend_stub"]
    argv = Path(f"/proc/{triton}/cmdline").read_bytes().decode().split("\0")
    return triton, stubs, Path(argv[argv.index("--model-repository") + 1]).parent


def live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def gone(pids, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while any(live(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def wait(proc, timeout: float) -> int | None:
    """The exit code, None if still running after `timeout` s."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def end(proc) -> None:
    """A server that did not stop by itself is killed, so that a failing test leaves nothing running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def status(port: int, path: str) -> int | None:
    """HTTP status of GET path, None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return None


def test_sigterm_with_a_long_request_in_flight_ends_within_the_exit_timeout(tiny):
    proc, client, _ = start(tiny.bundle("shapes"), "--max-batch", "8", "--queue-delay-us", "0", "--max-calls",
                            "20000", "--exit-timeout", str(EXIT_TIMEOUT))
    try:
        triton, stubs, workspace = triton_of(proc.pid)
        # 8 items x 19 999 heun calls: half a minute here, far past the exit timeout
        pending = client.async_infer("discodiff", inputs_for(range(8)), parameters={"steps": 10_000})
        time.sleep(1.0)
        assert proc.poll() is None
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = wait(proc, EXIT_TIMEOUT + 30)
        took = time.monotonic() - t
        try:
            answer = [e.decode() for e in pending.get_result().as_numpy("error").ravel()]
        except Exception as e:  # noqa: BLE001 - the connection went with the server
            answer = [f"failed: {e}"]
    finally:
        client.close()
        end(proc)
    assert took <= EXIT_TIMEOUT + MARGIN, (took, logged(proc)[-2000:])
    assert rc == 1, logged(proc)[-2000:]                   # answers were lost: not a clean exit
    assert answer and all("stopping" in a or a.startswith("failed") for a in answer), answer   # never a success
    assert "cut off" in logged(proc)
    assert gone([triton, *stubs]) and not workspace.exists()


def test_a_killed_stub_ends_the_server_so_readiness_drops(tiny):
    proc, client, ports = start(tiny.bundle("shapes"), "--max-batch", "8")
    try:
        triton, stubs, workspace = triton_of(proc.pid)
        assert len(stubs) == 1
        assert infer(client, [1], {"steps": 4}).as_numpy("error")[0, 0] == b""
        os.kill(stubs[0], signal.SIGKILL)
        t, still_ready = time.monotonic(), []
        while proc.poll() is None and time.monotonic() - t < 30:
            for path in ("/v2/health/ready", "/v2/models/discodiff/ready"):
                if status(ports[0], path) == 200 and time.monotonic() - t > 1.0:
                    still_ready.append((path, round(time.monotonic() - t, 2)))
            time.sleep(0.1)
        rc = wait(proc, 10)
    finally:
        client.close()
        end(proc)
    assert rc == 1, logged(proc)[-2000:]
    assert not still_ready, still_ready                   # a dead replica does not report itself ready
    assert status(ports[0], "/v2/health/ready") is None
    said = [ln for ln in logged(proc).splitlines() if "stub" in ln and str(stubs[0]) in ln]
    assert len(said) == 1 and "exiting 1" in said[0], said
    assert gone([triton]) and not workspace.exists()


@pytest.mark.parametrize("args, words", [
    (["--threads", str(CORES + 1)], "--threads"),                     # 1024 threads were taken on 2 cores
    (["--max-calls", "0"], "--max-calls"),
    (["--max-calls", "20001"], "--max-calls"),
    (["--max-calls", "10"], "--max-calls 10 is below the bundle's default of 35 denoiser calls"),
    (["--exit-timeout", "0"], "--exit-timeout"),
])
def test_options_past_their_bounds_are_refused_in_one_line(tiny, args, words):
    proc, _, ports = start(tiny.bundle("shapes"), "--max-batch", "8", *args, wait=False)
    try:
        rc = wait(proc, 60)
    finally:
        end(proc)
    err = [ln for ln in logged(proc).splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("discodiff-serve: error:") and words in err[0], err
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))                 # still free: nothing was bound
