"""The runtime never needs torch: `discodiff-run` end to end, and every module of discodiff.runtime, in a
fresh interpreter where importing torch (or any torch.* module) raises ImportError."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np

from export_fixtures import *  # noqa: F401,F403

from discodiff.runtime.bundle import open_bundle
from discodiff.runtime.draws import draw

SHIM = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"torch is blocked in this test ({name})", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    assert "torch" not in sys.modules

    def report(**kw):
        try:
            import torch  # noqa: F401
            blocked = False
        except ImportError:
            blocked = True
        kw.update(torch_loaded=sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  shim_blocks=blocked,
                  training_loaded=sorted(m for m in sys.modules if m.startswith(("discodiff.networks",
                                         "discodiff.train", "discodiff.export", "discodiff.sampling",
                                         "discodiff.checkpoint"))))
        print("RESULT " + json.dumps(kw))
''')


def run_shimmed(body: str, cwd) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run([sys.executable, "-c", SHIM + textwrap.dedent(body)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["shim_blocks"] is True
    res["stderr"] = proc.stderr
    return res


def test_discodiff_run_without_torch(toy8_bundle, tmp_path):
    out = tmp_path / "out"
    res = run_shimmed(f'''
        sys.argv = ["discodiff-run", "--bundle", {str(toy8_bundle)!r}, "--out", {str(out)!r}, "--n", "4",
                    "--batch", "4", "--steps", "5", "--quiet"]
        from discodiff.runtime import cli
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code
        report(code=code)
    ''', tmp_path)
    assert res["code"] == 0, res["stderr"]
    assert res["torch_loaded"] == []
    assert res["training_loaded"] == []
    assert (out / "samples.npz").is_file() and (out / "scatter.png").is_file() and (out / "timing.json").is_file()
    assert sorted(p.name for p in out.glob("*.npy")) == [f"{s:06d}.npy" for s in range(4)]
    o = open_bundle(toy8_bundle, backend="ort", precision="fp32")
    x, tok = o.pipeline.sample(draw(np.arange(4), (2,), 1, 0), steps=5)
    with np.load(out / "samples.npz") as f:
        np.testing.assert_allclose(f["x"], x, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(f["tokens"], tok)


def test_every_runtime_module_imports_without_torch(tmp_path):
    res = run_shimmed('''
        import importlib, pkgutil
        import discodiff.runtime as rt
        names = [rt.__name__] + [m.name for m in pkgutil.walk_packages(rt.__path__, rt.__name__ + ".")]
        failed = {}
        for n in names:
            try:
                importlib.import_module(n)
            except Exception as e:
                failed[n] = f"{type(e).__name__}: {e}"
        import discodiff.cli_util, discodiff.errors, discodiff.atomic, discodiff.config  # torch-free helpers
        report(names=names, failed=failed)
    ''', tmp_path)
    assert res["failed"] == {}
    assert res["torch_loaded"] == [] and res["training_loaded"] == []
    expected = {"discodiff.runtime", "discodiff.runtime.cli", "discodiff.runtime.bundle", "discodiff.runtime.manifest",
                "discodiff.runtime.pipeline", "discodiff.runtime.draws", "discodiff.runtime.solvers",
                "discodiff.runtime.output", "discodiff.runtime.backends", "discodiff.runtime.backends.ort",
                "discodiff.runtime.backends.trt", "discodiff.runtime.backends.base"}
    assert expected <= set(res["names"])


def test_shim_really_blocks_torch(tmp_path):
    """Control: code that needs torch fails under the shim (so the tests above can fail)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", SHIM + "\nimport discodiff.sampling\n"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
