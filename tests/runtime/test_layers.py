"""The layers hold: statically, every module imports only from its own layer and those below it
(torch-free helpers -> runtime -> torch package -> export -> benchmarks), with absolute imports;
dynamically, the runtime never needs torch: `discodiff-run` end to end, and every module of
discodiff.runtime, in a fresh interpreter where importing torch (or any torch.* module) raises ImportError."""
from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from discodiff.runtime.pipeline import Pipeline
from discodiff.runtime.draws import draw
from discodiff.runtime.sampling import sample_batch

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = {"discodiff": "discodiff", "export": "discodiff.export", "runtime": "discodiff.runtime",
           "benchmarks": "discodiff.benchmarks"}
# Layer 1: torch-free helpers every layer may use (the runtime's allow-list of discodiff modules).
HELPERS = {"discodiff", "discodiff.errors", "discodiff.atomic", "discodiff.cli_util", "discodiff.config", "discodiff.rundir",
           "discodiff.jsonfile", "discodiff.lock", "discodiff.imageheader"}
# Third-party modules the torch-free layers may import (lazily where optional).
TORCH_FREE = {"numpy", "onnxruntime", "cv2", "click", "tqdm", "matplotlib", "tensorrt", "polygraphy", "pytriton",
              "tritonclient"}


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    name = ".".join(parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def layer(name: str) -> int:
    if name in HELPERS:
        return 1
    if name.startswith("discodiff.runtime"):
        return 2
    if name.startswith("discodiff.export"):
        return 4
    if name.startswith("discodiff.benchmarks"):   # clients of every layer; nothing imports them
        return 5
    return 3


def imports(source: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement, nested (lazy) ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(("." * node.level + (node.module or ""), node.lineno))
            elif node.module == "discodiff":   # from discodiff import presets -> discodiff.presets
                found += [(f"discodiff.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def violations(name: str, source: str) -> list[str]:
    """What module `name` imports against the layer rule."""
    bad, mine = [], layer(name)
    for mod, line in imports(source):
        top = mod.split(".")[0]
        if mod.startswith("."):
            bad.append(f"{name}:{line} relative import {mod} (write imports absolute)")
        elif top == "discodiff":
            if layer(mod) > mine:
                bad.append(f"{name}:{line} imports {mod} from a higher layer ({layer(mod)} > {mine})")
        elif mine <= 2 and top not in TORCH_FREE and top not in sys.stdlib_module_names and top != "__future__":
            bad.append(f"{name}:{line} imports {mod}, which the torch-free layers may not")
    return bad


def project_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}


def test_every_module_keeps_to_its_layer():
    mods = project_modules()
    assert {"discodiff.runtime.sampling", "discodiff.runtime.contract", "discodiff.sampling",
            "discodiff.export.bundle"} <= set(mods)
    bad = [v for name, path in sorted(mods.items()) for v in violations(name, path.read_text())]
    assert bad == []


@pytest.mark.parametrize("name, source, word", [
    ("discodiff.runtime.x", "import torch\n", "torch"),
    ("discodiff.runtime.x", "def f():\n    import torch.nn\n", "torch.nn"),
    ("discodiff.runtime.x", "from discodiff.checkpoint import load_model\n", "discodiff.checkpoint"),
    ("discodiff.runtime.x", "from discodiff import sampling\n", "discodiff.sampling"),
    ("discodiff.runtime.x", "from ..atomic import atomic_write\n", "relative"),
    ("discodiff.errors", "from discodiff.runtime.draws import draw\n", "discodiff.runtime"),
    ("discodiff.sampling", "from discodiff.export.parity import run_all\n", "discodiff.export"),
    ("discodiff.export.bundle", "from discodiff.benchmarks.common import Target\n", "discodiff.benchmarks"),
])
def test_the_layer_rule_catches_a_planted_import(name, source, word):
    """Control: the rule above can fail."""
    found = violations(name, source)
    assert len(found) == 1 and word in found[0], found


def test_torch_side_may_import_the_runtime_and_export_may_import_all():
    assert violations("discodiff.sampling", "from discodiff.runtime.sampling import sample_batch\nimport torch\n") == []
    assert violations("discodiff.export.bundle", "from discodiff.sampling import model_meta\nimport onnx\n") == []


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
    with Pipeline.open(toy8_bundle, backend="ort", precision="fp32") as o:
        x, tok = sample_batch(o.model, draw(np.arange(4), o.model.meta), steps=5)
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
                "discodiff.runtime.sampling", "discodiff.runtime.model", "discodiff.runtime.contract",
                "discodiff.runtime.tokens", "discodiff.runtime.schedule", "discodiff.runtime.fit.schedule",
                "discodiff.runtime.draws", "discodiff.runtime.solvers",
                "discodiff.runtime.output", "discodiff.runtime.backends", "discodiff.runtime.backends.ort",
                "discodiff.runtime.backends.trt", "discodiff.runtime.backends.base"}
    assert expected <= set(res["names"])


def test_shim_really_blocks_torch(tmp_path):
    """Control: code that needs torch fails under the shim (so the tests above can fail)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", SHIM + "\nimport discodiff.sampling\n"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
