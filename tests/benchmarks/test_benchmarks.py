"""Smoke runs of the two benchmark scripts on tiny real models: they run, write their files, and the
numbers they print hold together (fidelity of the float32 runtime, ratios consistent with timings)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from discodiff.benchmarks.demo_timing import readme_commands, run_phases
from tests.helpers import copy_tree


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_latency_quick(toy8_run, toy8_bundle, tmp_path):
    bundle = toy8_bundle
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--quick", "--rows",
                        "torch-eager,ort-fp32", "--checkpoint", str(toy8_run / "model.safetensors"),
                        "--bundle", str(bundle), "--out-dir", str(out), "--machine", "test"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "latency-quick-test.json").read_text())
    assert (out / "latency-quick-test.png").stat().st_size > 0
    rows = {(x["row"], x["batch"]): x for x in rep["results"]}
    assert set(rows) == {(row, b) for row in ("torch-eager", "ort-fp32") for b in (1, 4)}
    for b in (1, 4):
        ort, eager = rows[("ort-fp32", b)], rows[("torch-eager", b)]
        assert ort["fidelity"]["max_abs"] <= 1e-4 and ort["fidelity"]["token_agreement"] == 1.0
        assert eager["fidelity"]["max_abs"] == 0.0
        ratio = eager["stages"]["end_to_end"]["median_ms"] / ort["stages"]["end_to_end"]["median_ms"]
        assert ort["speedup_vs_torch-eager"] == pytest.approx(ratio)
        assert ort["rounds_identical"]
    assert rep["probes"]["matmul"]["gflops"] == max(rep["probes"]["matmul"]["by_library"].values())
    assert "prior32" not in rep["probes"] and "shared" not in rep      # the quick run skips the long probes
    assert "ort-fp32" in r.stdout and "compute floor" in r.stdout


def test_latency_refuses_a_missing_bundle(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--checkpoint",
                        str(tmp_path / "none.safetensors")], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "discodiff-train" in r.stderr


@pytest.mark.slow
def test_quality_quick(tmp_path):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--only", "toy8",
                        "--work", str(tmp_path / "work"), "--out-dir", str(out), "--machine", "test"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "quality-toy8-quick-test.json").read_text())
    for f in ("scatter", "w2", "curvature"):
        assert (out / f"quality-toy8-quick-{f}-test.png").stat().st_size > 0
    models = {row["model"] for row in rep["rows"]}
    assert models == {"disco", "plain"}
    for row in rep["rows"]:
        assert row["w2"] >= row["excess_w2"] >= 0
        assert row["w2_matched"] >= row["excess_w2_matched"] >= 0
        assert 0 <= row["off_mode"] <= 1
        if row["model"] == "disco":
            assert 0 < row["purity"] <= 1 and sum(row["code_shares"]) == pytest.approx(1.0, abs=1e-3)
    assert rep["models"]["disco"]["m"] == 1 and rep["models"]["plain"]["m"] == 0
    # same size: the plain model differs only by the latent embedding and its projection
    assert rep["models"]["plain"]["params"] < rep["models"]["disco"]["params"] < 1.2 * rep["models"]["plain"]["params"]
    assert rep["floor_w2_matched"] > 0
    assert len(rep["targets"]) == 6 and all(isinstance(t["met"], bool) for t in rep["targets"])


@pytest.mark.slow
def test_frontier_quick(toy8_bundle, tmp_path):
    out = tmp_path / "results"
    # the DisCo model: the session's tiny toy8 run and bundle (frontier.py trains and exports only what is
    # missing); the plain model is trained and exported by the script itself
    copy_tree(toy8_bundle.parent, tmp_path / "work" / "toy8-disco")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--quick", "--only", "toy8",
                        "--work", str(tmp_path / "work"), "--out-dir", str(out), "--machine", "test"],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "frontier-toy8-quick-test.json").read_text())
    assert (out / "frontier-toy8-quick-test.png").stat().st_size > 0
    for variant in ("disco", "plain"):
        m = rep["models"][variant]
        fitted = [g for g in m["rmse_grid"] if g["schedule"] == "fitted"]
        assert fitted and all(len(g["sigmas"]) - 1 in (g["nfe"], (g["nfe"] + 1) // 2) for g in fitted)
        assert all(np.isfinite(r["teacher_rmse"]) and r["ms_per_sample"] > 0 for r in m["rows"])
    assert any(t["target"].startswith("fitted vs EDM") for t in rep["targets"])


@pytest.mark.slow
def test_memory_quick(toy8_bundle, tmp_path):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--quick", "--bundle", str(toy8_bundle),
                        "--batch", "8", "--machine", "test", "--out-dir", str(out), "--work", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "memory-quick-test.json").read_text())
    assert [x["n"] for x in rep["rows"]] == [100, 2000] and rep["rows"][1]["files"] == 2000 + 3
    assert all(x["peak_rss_mib"] > 10 for x in rep["rows"])


@pytest.mark.slow
def test_serve_quick(shapes_bundle, tmp_path):
    pytest.importorskip("pytriton", reason="needs the serving extra: pip install -e '.[serve]'")
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick", "--bundle", str(shapes_bundle),
                        "--max-batch", "4", "--machine", "test", "--out-dir", str(out)], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "serve-quick-test.json").read_text())
    s = rep["soak"]
    assert s["transport_errors"] == 0 and s["valid_wrong"] == 0 and s["valid_one_level_off"] == 0
    assert s["malformed_answered_with_error"] == s["malformed"]
    assert [x["concurrency"] for x in rep["load"]] == [1, 4] and rep["server_exit_code"] == 0


def test_demo_timing_reads_the_readme_commands_phase_by_phase():
    """benchmarks/demo_timing.py times exactly the README's two commands: its phases, joined again, are
    those commands."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_timing.py"), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cmds = readme_commands(ROOT / "README.md")
    readme = (ROOT / "README.md").read_text()
    for name in ("demo", "tests"):
        assert "\n" + " && ".join(cmds[name]) + "\n" in readme
        assert all(p in r.stdout for p in cmds[name])
    assert any(p.startswith("discodiff-train") for p in cmds["demo"])
    assert any("pytest" in p for p in cmds["tests"])


def test_demo_timing_times_each_phase_and_stops_at_a_failure(tmp_path):
    r = run_phases(["sleep 0.3", "true", "false", "echo never"], tmp_path, tmp_path / "log", None)
    assert r["rc"] == 1
    s = [p["seconds"] for p in r["phases"]]
    assert s[0] >= 0.3 and s[1] is not None and s[1] < 0.3 and s[2] is None and s[3] is None


def test_demo_timing_refuses_an_unwritable_out_dir_before_any_run(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_timing.py"), "--out-dir",
                        str(blocker / "results")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--out-dir" in r.stderr
    assert blocker.read_text() == "keep me" and "phases" not in r.stdout
