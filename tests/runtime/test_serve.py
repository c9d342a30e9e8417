"""discodiff-serve for real: Triton (from nvidia-pytriton) on free loopback ports, spoken to with
tritonclient. Round trip, the same sample as discodiff-run, concurrent requests merged into batches,
every kind of bad request (and one past any bound) answered while the server stays healthy, a full queue
rejecting, SIGTERM draining the requests in flight, and a bad bundle refused before any port is bound.
SIGTERM under load, a killed stub and the option bounds: test_serve_reliability.py."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import cv2
import numpy as np
import pytest

pytriton = pytest.importorskip("pytriton", reason="needs the serving extra: pip install -e '.[serve]'")
http = pytest.importorskip("tritonclient.http")

from tests.helpers import VENV_BIN, call, free_port, run_cli  # noqa: E402

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(bundle, *extra, wait: bool = True):
    ports = [free_port() for _ in range(3)]
    log = tempfile.TemporaryFile("w+")        # read on failure; a pipe nobody reads would fill and block the server
    proc = subprocess.Popen([str(VENV_BIN / "discodiff-serve"), "--bundle", str(bundle), "--http-port", str(ports[0]),
                             "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--threads", "1", *extra],
                            stdout=log, stderr=log, text=True, env=ENV)
    proc.log = log
    client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}", concurrency=64)
    if wait:
        end = time.time() + 120
        while time.time() < end:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited {proc.returncode}: {logged(proc)[-3000:]}")
            try:
                if client.is_model_ready("discodiff"):
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        else:
            proc.kill()
            raise AssertionError("the server did not become ready in 120 s")
    return proc, client, ports


def logged(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def inputs_for(seeds, classes=None, dtype="INT64"):
    s = np.asarray(seeds, np.int64 if dtype == "INT64" else np.int32).reshape(-1, 1)
    inputs = [http.InferInput("seed", list(s.shape), dtype)]
    inputs[0].set_data_from_numpy(s)
    if classes is not None:
        c = np.asarray(classes, np.int32).reshape(-1, 1)
        inputs.append(http.InferInput("class_label", list(c.shape), "INT32"))
        inputs[-1].set_data_from_numpy(c)
    return inputs


def infer(client, seeds, params=None, classes=None, dtype="INT64"):
    return client.infer("discodiff", inputs_for(seeds, classes, dtype), parameters=params or {})


def concurrently(client, seeds, params) -> list:
    """One request per seed, all in flight at once (tritonclient's own concurrency: one thread, gevent)."""
    pending = [client.async_infer("discodiff", inputs_for([s]), parameters=params) for s in seeds]
    out = []
    for p in pending:
        try:
            out.append(p.get_result())
        except Exception as e:  # noqa: BLE001 - a rejected request
            out.append(e)
    return out


@pytest.fixture(scope="module")
def server(tiny):
    proc, client, ports = start(tiny.bundle("shapes"), "--max-batch", "8", "--queue-delay-us", "50000")
    yield client, ports
    client.close()
    assert stop(proc) == 0


def test_round_trip_equals_discodiff_run(server, tiny, tmp_path, capsys):
    client, _ = server
    r = infer(client, [40, 41, 42], {"steps": 4})
    assert r.as_numpy("sample").shape == (3, 8, 8, 3) and r.as_numpy("sample").dtype == np.uint8
    assert r.as_numpy("error").ravel().tolist() == [b"", b"", b""]
    out = tmp_path / "run"
    rc, _, err = call(capsys, run_cli, "--bundle", tiny.bundle("shapes"), "--out", out, "--n", 3, "--seed", 40,
                      "--steps", 4, "--quiet")
    assert rc == 0, err
    for i, s in enumerate((40, 41, 42)):
        png = cv2.cvtColor(cv2.imread(str(out / f"{s:06d}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(r.as_numpy("sample")[i], png)
    with np.load(out / "samples.npz") as f:
        np.testing.assert_array_equal(r.as_numpy("tokens"), f["tokens"])


def _metrics(port) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("nv_inference_count{", "nv_inference_exec_count{")) and 'model="discodiff"' in line:
            out[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return out


def test_concurrent_requests_are_batched(server):
    client, ports = server
    before = _metrics(ports[2])
    results = concurrently(client, range(100, 116), {"steps": 4})
    after = _metrics(ports[2])
    items = after["nv_inference_count"] - before.get("nv_inference_count", 0)
    execs = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0)
    assert items == 16 and execs < 16, (items, execs)        # merged: fewer handler calls than requests
    alone = infer(client, [105], {"steps": 4}).as_numpy("sample")[0]
    np.testing.assert_array_equal(results[5].as_numpy("sample")[0], alone)


@pytest.mark.parametrize("case", ["missing_seed", "class_out_of_range", "nfe_without_fit", "unknown_solver",
                                  "negative_seed", "wrong_dtype", "wrong_shape", "huge_steps", "too_many_calls",
                                  "huge_guidance"])
def test_bad_requests_are_answered_and_the_server_keeps_serving(server, case):
    client, _ = server
    if case in ("wrong_dtype", "wrong_shape"):   # Triton itself refuses these, before the model
        with pytest.raises(Exception) as exc:
            if case == "wrong_dtype":
                infer(client, [1], dtype="INT32")
            else:
                inp = http.InferInput("seed", [1, 2], "INT64")
                inp.set_data_from_numpy(np.array([[1, 2]], np.int64))
                client.infer("discodiff", [inp])
        assert "seed" in str(exc.value)
    else:
        kw = {"missing_seed": {}, "class_out_of_range": {"classes": [7]}, "nfe_without_fit": {"params": {"nfe": 5, "schedule": "fitted"}},
              "unknown_solver": {"params": {"solver": "rk4"}}, "negative_seed": {},
              "huge_steps": {"params": {"steps": 10**7}},               # held the only instance for hours
              "too_many_calls": {"params": {"steps": 201}},             # heun: 401 calls > --max-calls 400
              "huge_guidance": {"params": {"guidance": 1e308}}}[case]   # gave an all-zero image, no error
        if case == "missing_seed":
            c = http.InferInput("class_label", [1, 1], "INT32")
            c.set_data_from_numpy(np.array([[1]], np.int32))
            r = client.infer("discodiff", [c])
        else:
            r = infer(client, [-3] if case == "negative_seed" else [1], **kw)
        msg = r.as_numpy("error")[0, 0].decode()
        assert msg and "\n" not in msg, msg
    assert client.is_server_live() and client.is_model_ready("discodiff")
    assert infer(client, [1], {"steps": 4}).as_numpy("error")[0, 0] == b""


def test_a_full_queue_rejects_and_the_server_recovers(tiny):
    proc, client, _ = start(tiny.bundle("shapes"), "--max-batch", "1", "--max-queue", "1", "--queue-delay-us", "0")
    try:
        outcome = ["ok" if not isinstance(r, Exception) else str(r) for r in concurrently(client, range(8), {"steps": 40})]
        rejected = [o for o in outcome if o != "ok"]
        assert rejected and all("queue" in o.lower() for o in rejected), outcome
        assert "ok" in outcome and infer(client, [1], {"steps": 4}).as_numpy("error")[0, 0] == b""
    finally:
        client.close()
        assert stop(proc) == 0


def test_sigterm_finishes_requests_in_flight_and_exits_0(tiny):
    proc, client, _ = start(tiny.bundle("shapes"), "--max-batch", "2", "--queue-delay-us", "0")
    pending = [client.async_infer("discodiff", inputs_for([i]), parameters={"steps": 150}) for i in range(3)]
    time.sleep(1.0)                     # the requests are in flight
    proc.send_signal(signal.SIGTERM)
    done = [p.get_result().as_numpy("error")[0, 0] for p in pending]
    client.close()
    assert proc.wait(timeout=120) == 0, logged(proc)[-2000:]
    assert done == [b"", b"", b""]


def test_a_bad_bundle_fails_in_one_line_before_binding_any_port(tmp_path):
    proc, client, ports = start(tmp_path / "no-bundle", wait=False)
    rc = proc.wait(timeout=60)
    err = [ln for ln in logged(proc).splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("discodiff-serve: error:") and "does not exist" in err[0]
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))                 # still free: nothing was bound
