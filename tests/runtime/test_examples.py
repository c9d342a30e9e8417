"""The README's Python example and examples/sample.py run as a new user would run them: on a bundle at
runs/shapes/bundle (here the shapes-tiny test bundle copied there), in a fresh process, without torch."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import copy_tree

ROOT = Path(__file__).resolve().parents[2]
NO_TORCH = "import sys\nsys.modules['torch'] = None   # importing torch now fails: the runtime must not need it\n"


def readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(args, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_readme_python_example_runs_as_written(shapes_bundle, tmp_path):
    copy_tree(shapes_bundle, tmp_path / "runs" / "shapes" / "bundle")
    code = readme_python()
    assert "Pipeline.open(\"runs/shapes/bundle\")" in code
    check = ("\nassert images.shape[0] == 16 and images.dtype.name == 'uint8' and tokens.shape == (16, 2)"
             "\nassert len(guided) == 4 and (guided.labels == 2).all()\nprint('example ok')\n")
    proc = _run([sys.executable, "-c", NO_TORCH + code + check], tmp_path)
    assert "example ok" in proc.stdout


def test_examples_script_runs_and_writes_its_picture(shapes_bundle, toy8_bundle, tmp_path):
    for bundle, name in ((shapes_bundle, "shapes.png"), (toy8_bundle, "toy8.png")):
        proc = _run([sys.executable, str(ROOT / "examples" / "sample.py"), "--bundle", str(bundle), "--n", "6",
                     "--out", str(tmp_path / name)], tmp_path)
        assert f"wrote {tmp_path / name}" in proc.stdout and (tmp_path / name).stat().st_size > 100
