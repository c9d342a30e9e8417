"""What the runtime reads from a bundle: only regular files inside it, named plainly by the manifest and
hashed; never through a symbolic link, never an engine path outside it, never a data file the manifest
does not declare; and a run whose samples come out non-finite writes nothing.

Each case runs the real `discodiff-run` (in process, or as a process where a hang is what is tested) and
expects one line, a non-zero exit and an --out left as it was.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from discodiff.runtime.manifest import load_manifest
from discodiff.runtime.onnx_refs import OnnxFormatError, external_locations
from tests.helpers import VENV_BIN, call, copy_tree, one_error_line, read_manifest, run_cli, sha256, tree_state, \
    write_manifest

RUN = ("--n", "3", "--batch", "3", "--steps", "2", "--solver", "euler", "--quiet")


def _run_fails(capsys, bundle, tmp_path, *words, args=()) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("mine")
    before = tree_state(out)
    rc, _, err = call(capsys, run_cli, "--bundle", bundle, "--out", out, *RUN, *args)
    line = one_error_line(rc, err, "discodiff-run", *words)
    assert tree_state(out) == before, "the failed run changed --out"
    return line


def _rehash(bundle, graph: str) -> None:
    man = read_manifest(bundle)
    entry = man["graphs"][graph]
    entry["sha256"] = sha256(bundle / entry["file"])
    for f in entry.get("external_data", {}):
        entry["external_data"][f] = sha256(bundle / f)
    write_manifest(bundle, man)


def _externalize(bundle, graph: str, location: str, declare: bool) -> None:
    """Move `graph`'s weights into `location` beside it; declare the file in the manifest or not."""
    path = bundle / f"{graph}.onnx"
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=1024)
    man = read_manifest(bundle)
    man["graphs"][graph].pop("external_data", None)
    if declare:
        man["graphs"][graph]["external_data"] = {location: sha256(bundle / location)}
    write_manifest(bundle, man)
    _rehash(bundle, graph)


# ------------------------------------------------------------------------------------------- symlinks
def test_graph_symlinked_to_an_identical_file_outside_is_not_read(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    os.replace(b / "denoiser.onnx", outside)             # same bytes, same sha256: only the link is wrong
    os.symlink(outside, b / "denoiser.onnx")
    assert "symbolic link" in _run_fails(capsys, b, tmp_path, "denoiser", "symbolic link")


def test_link_to_a_fifo_is_refused_without_opening_it(toy8_bundle, tmp_path):
    """A link to /etc/passwd used to be opened and hashed; the target here is a FIFO, which blocks whoever
    opens it: the run must answer at once, so it never opened the target."""
    b = copy_tree(toy8_bundle, tmp_path / "b")
    os.mkfifo(tmp_path / "fifo")
    (b / "denoiser.onnx").unlink()
    os.symlink(tmp_path / "fifo", b / "denoiser.onnx")
    proc = subprocess.run([str(VENV_BIN / "discodiff-run"), "--bundle", str(b), "--out", str(tmp_path / "out"), *RUN],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_fifo_in_the_bundle_is_refused_without_blocking(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    (b / "denoiser.onnx").unlink()
    os.mkfifo(b / "denoiser.onnx")
    _run_fails(capsys, b, tmp_path, "not a regular file")


def test_manifest_symlink_is_not_read(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    os.replace(b / "manifest.json", tmp_path / "manifest.json")
    os.symlink(tmp_path / "manifest.json", b / "manifest.json")
    _run_fails(capsys, b, tmp_path, "manifest", "symbolic link")


# ------------------------------------------------------------------------------------------- engine paths
@pytest.mark.parametrize("file", ["/etc/passwd", "../../etc/passwd", "sub/denoiser.plan", "..", ""])
def test_engine_paths_must_be_plain_names_inside_the_bundle(capsys, toy8_bundle, tmp_path, file):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    man = read_manifest(b)
    man["engines"] = {"denoiser": {"file": file, "sha256": sha256(b / "denoiser.onnx")}}
    write_manifest(b, man)
    _run_fails(capsys, b, tmp_path, "engines.denoiser")


def test_engine_file_that_is_a_link_is_not_read(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    (tmp_path / "evil.plan").write_bytes(b"not an engine")
    os.symlink(tmp_path / "evil.plan", b / "denoiser.plan")
    man = read_manifest(b)
    man["engines"] = {"denoiser": {"file": "denoiser.plan", "sha256": sha256(tmp_path / "evil.plan")}}
    write_manifest(b, man)
    _run_fails(capsys, b, tmp_path, "engine denoiser", "symbolic link")


# ------------------------------------------------------------------------------------------- external data
def test_undeclared_external_data_is_refused_before_loading(capsys, toy8_bundle, tmp_path):
    """Before, an undeclared data file was loaded unhashed: tampered, it gave all-NaN samples, exit 0."""
    b = copy_tree(toy8_bundle, tmp_path / "b")
    _externalize(b, "denoiser", "weights.bin", declare=False)
    data = bytearray((b / "weights.bin").read_bytes())
    data[: len(data) // 2] = b"\xff" * (len(data) // 2)       # NaN bit patterns
    (b / "weights.bin").write_bytes(bytes(data))
    _rehash(b, "denoiser")
    _run_fails(capsys, b, tmp_path, "weights.bin", "does not declare")


def test_data_file_declared_under_another_name_is_refused(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    _externalize(b, "denoiser", "weights.bin", declare=True)
    man = read_manifest(b)
    (b / "other.bin").write_bytes(b"x")
    man["graphs"]["denoiser"]["external_data"] = {"other.bin": sha256(b / "other.bin")}
    write_manifest(b, man)
    _run_fails(capsys, b, tmp_path, "weights.bin", "does not declare")


def test_declared_external_data_still_runs(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    _externalize(b, "denoiser", "weights.bin", declare=True)
    rc, _, err = call(capsys, run_cli, "--bundle", b, "--out", tmp_path / "out", *RUN)
    assert rc == 0, err
    rc, _, err = call(capsys, run_cli, "--bundle", toy8_bundle, "--out", tmp_path / "ref", *RUN)
    assert rc == 0, err
    with np.load(tmp_path / "out" / "samples.npz") as a, np.load(tmp_path / "ref" / "samples.npz") as r:
        np.testing.assert_array_equal(a["x"], r["x"])


def test_external_locations_agree_with_onnx(toy8_bundle, tmp_path):
    """The wire-format walk finds what onnx itself finds, in initializers and in node attributes."""
    assert external_locations(toy8_bundle / "denoiser.onnx") == set()
    b = copy_tree(toy8_bundle, tmp_path / "b")
    _externalize(b, "denoiser", "w.bin", declare=True)
    model = onnx.load(str(b / "denoiser.onnx"), load_external_data=False)
    want = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert want == {"w.bin"} and external_locations(b / "denoiser.onnx") == want
    # a Constant node whose tensor lives in a file
    t = numpy_helper.from_array(np.ones(4, np.float32), "c")
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../const.bin")
    node = helper.make_node("Constant", [], ["y"], value=t)
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])])
    (tmp_path / "c.onnx").write_bytes(helper.make_model(g).SerializeToString())
    assert external_locations(tmp_path / "c.onnx") == {"../const.bin"}
    (tmp_path / "junk.onnx").write_bytes(b"\x0f" * 64)
    with pytest.raises(OnnxFormatError):
        external_locations(tmp_path / "junk.onnx")


# ------------------------------------------------------------------------------------------- nested JSON
def test_deeply_nested_manifest_is_one_line(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    (b / "manifest.json").write_text("[" * 200_000)
    _run_fails(capsys, b, tmp_path, "manifest.json", "not valid JSON")
    with pytest.raises(Exception) as exc:
        load_manifest(b)
    assert type(exc.value).__name__ == "UserError"


# ------------------------------------------------------------------------------------------- non-finite samples
def _nan_denoiser(bundle) -> None:
    """The denoiser graph's output multiplied by NaN, and the manifest re-hashed."""
    model = onnx.load(str(bundle / "denoiser.onnx"))
    out = model.graph.output[0].name
    for n in model.graph.node:
        n.output[:] = [f"{o}__raw" if o == out else o for o in n.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan_const"))
    model.graph.node.append(helper.make_node("Mul", [f"{out}__raw", "nan_const"], [out]))
    onnx.save(model, str(bundle / "denoiser.onnx"))
    _rehash(bundle, "denoiser")


def test_non_finite_samples_fail_the_run_and_name_their_seeds(capsys, toy8_bundle, tmp_path):
    """A denoiser that answers NaN (a damaged graph, re-hashed so that nothing else catches it): the run
    names the seeds, exits non-zero and writes nothing."""
    b = copy_tree(toy8_bundle, tmp_path / "b")
    _nan_denoiser(b)
    _run_fails(capsys, b, tmp_path, "non-finite", "seed(s) 7, 8, 9", "nothing was written", args=("--seed", "7"))


def test_a_failed_run_removes_the_out_folder_it_made(capsys, toy8_bundle, tmp_path):
    b = copy_tree(toy8_bundle, tmp_path / "b")
    _nan_denoiser(b)
    out = tmp_path / "new" / "out"
    rc, _, err = call(capsys, run_cli, "--bundle", b, "--out", out, *RUN)
    one_error_line(rc, err, "discodiff-run", "non-finite")
    assert not out.exists()


@pytest.mark.parametrize("prog", ["discodiff-fit", "discodiff-serve"])
def test_deeply_nested_manifest_is_one_line_for_fit_and_serve(toy8_bundle, tmp_path, prog):
    """The same manifest reader serves every command: a nested manifest never reaches a traceback (the
    server refuses before it binds any port)."""
    b = copy_tree(toy8_bundle, tmp_path / "b")
    (b / "manifest.json").write_text("[" * 200_000)
    args = ["--nfe", "4"] if prog == "discodiff-fit" else ["--http-port", "1", "--grpc-port", "2", "--metrics-port", "3"]
    proc = subprocess.run([str(VENV_BIN / prog), "--bundle", str(b), *args], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "not valid JSON" in lines[0] and "Traceback" not in proc.stderr
