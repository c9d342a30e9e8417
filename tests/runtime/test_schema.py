"""Bundles written before: they still load and sample as they did, older schemas are migrated, keys a
newer toolkit adds are tolerated and kept, and a newer schema is refused with one line.

tests/data holds two bundles exported by earlier toolkits and never re-exported (toy8-tiny):
bundle-schema2-toy8 (schema 2, the code of 2 Dec 2026) and bundle-schema1-toy8 (schema 1, exported and
sampled by the code before commit f580c27). Each `-expected.npz` holds what that toolkit's
`discodiff-run --n 6 --batch 6 --solver euler --steps 4` drew (x, tokens). Nothing writes into tests/data:
every test that could copies to tmp_path, and the ones that read it check it is untouched.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from discodiff.errors import UserError
from discodiff.runtime import Pipeline
from discodiff.runtime import manifest as manifest_mod
from discodiff.runtime.fit.cli import update_manifest
from discodiff.runtime.manifest import MIGRATIONS, SCHEMA, Manifest, load_manifest, migrate
from tests.helpers import call, copy_tree, one_error_line, read_manifest, run_cli, write_manifest

DATA = Path(__file__).resolve().parents[1] / "data"
OLD = {1: DATA / "bundle-schema1-toy8", 2: DATA / "bundle-schema2-toy8"}
RUN = dict(solver="euler", steps=4, batch=6)       # what the expected samples were drawn with, seeds 0..5


def expected(schema: int) -> dict[str, np.ndarray]:
    with np.load(DATA / f"bundle-schema{schema}-toy8-expected.npz") as z:
        return {k: z[k] for k in z.files}


def data_state() -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of everything under tests/data: any write shows."""
    return {str(p.relative_to(DATA)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(DATA.rglob("*"))}


def assert_samples(x: np.ndarray, tokens: np.ndarray, schema: int) -> None:
    want = expected(schema)
    np.testing.assert_allclose(x, want["x"], rtol=0, atol=1e-6)   # other CPUs may round differently
    np.testing.assert_array_equal(tokens, want["tokens"])


# ------------------------------------------------------------------------------------------------ old bundles


@pytest.mark.parametrize("schema", sorted(OLD))
def test_bundle_written_before_samples_as_it_did(schema):
    before = data_state()
    with Pipeline.open(OLD[schema], backend="ort", precision="fp32", threads=1, spin="off") as pipe:
        out = pipe(range(6), **RUN)
        assert pipe.manifest.raw["schema"] == SCHEMA
    assert_samples(out.x, out.tokens, schema)
    assert data_state() == before


@pytest.mark.parametrize("schema", sorted(OLD))
def test_bundle_written_before_through_discodiff_run(schema, tmp_path, capsys):
    """The command writes only into --out (RunWriter), never into the bundle."""
    before = data_state()
    rc, _, err = call(capsys, run_cli, "--bundle", OLD[schema], "--n", 6, "--batch", 6, "--solver", "euler",
                      "--steps", 4, "--threads", 1, "--out", tmp_path / "out", "--quiet")
    assert rc == 0, err
    with np.load(tmp_path / "out" / "samples.npz") as z:
        assert_samples(z["x"], z["tokens"], schema)
    assert data_state() == before


def test_schema2_bundle_round_trips_exactly():
    """The manifest is written from the types that read it: reading the old file and writing it back
    gives the same document."""
    raw = read_manifest(OLD[2])
    assert raw["schema"] == 2
    assert Manifest.from_dict(OLD[2], raw).to_dict() == raw


def test_schema1_migrates_to_what_export_writes_now():
    """The migrated schema-1 manifest has schema 2's layout: the same graph contracts (value ranges
    included) and sampling block as a schema-2 export of the same preset; provenance kept."""
    raw1 = read_manifest(OLD[1])
    kept = copy.deepcopy(raw1)
    assert raw1["schema"] == 1 and "values" not in json.dumps(raw1["graphs"])
    new = migrate(raw1)
    assert raw1 == kept                                 # the document read is not changed
    man1, man2 = Manifest.from_dict(OLD[1], new), load_manifest(OLD[2], verify=False)
    assert man1.sampling == man2.sampling
    for name, g in man2.graphs.items():
        old = man1.graphs[name]
        assert (old.inputs, old.outputs, old.batch, old.precision) == (g.inputs, g.outputs, g.batch, g.precision)
        assert sorted(old.info) == sorted(g.info)       # name, null_label, cache dropped
    assert man1.info["source"] == raw1["source"] and man1.info["parity"] == raw1["parity"]


def test_every_older_schema_has_a_migration():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA))


def test_migrations_chain_for_future_schemas(tmp_path, monkeypatch):
    """The hook the next incompatible change uses: SCHEMA 3 with MIGRATIONS[2]; a schema-1 bundle runs
    through 1 -> 2 -> 3, a schema-2 bundle through 2 -> 3."""
    seen = []

    def from_2(raw):
        seen.append(raw["schema"])
        return {**raw, "schema": 3, "moved_in_3": True}

    monkeypatch.setattr(manifest_mod, "SCHEMA", 3)
    monkeypatch.setitem(MIGRATIONS, 2, from_2)
    for schema in (1, 2):
        man = load_manifest(OLD[schema])
        assert man.info["moved_in_3"] is True and man.to_dict()["schema"] == 3
    assert seen == [2, 2]
    b = copy_tree(OLD[2], tmp_path / "bundle")
    raw = read_manifest(b)
    write_manifest(b, {**raw, "schema": 4})
    with pytest.raises(UserError, match="newer toolkit"):
        load_manifest(b)


# ------------------------------------------------------------------------------------------------ new keys


def with_new_keys(raw: dict) -> dict:
    """What a later toolkit of the same schema might add: keys this runtime does not know."""
    raw = copy.deepcopy(raw)
    raw["latent_groups"] = [[0]]
    raw["graphs"]["denoiser"]["chunk"] = 16
    raw["graphs"]["denoiser"]["inputs"][0]["quant"] = {"scale": 0.1}   # no slot here: tolerated, not kept
    raw["sampling"]["student"] = {"kind": "consistency", "steps": [80.0, 0.8]}
    raw["sampling"]["fitted"] = {"4": {"solver": "euler", "nfe": 4, "sigmas": [80.0, 5.0, 0.5, 0.05, 0.0],
                                       "measured_by": "a later fitter"}}
    return raw


def test_unknown_keys_are_tolerated_and_kept_on_rewrite(tmp_path):
    b = copy_tree(OLD[2], tmp_path / "bundle")
    write_manifest(b, with_new_keys(read_manifest(b)))
    with Pipeline.open(b, backend="ort", precision="fp32", threads=1, spin="off") as pipe:
        out = pipe(range(6), **RUN)
        man = pipe.manifest
    assert_samples(out.x, out.tokens, 2)
    update_manifest(man, lambda now: now, "a test", "nothing")   # what discodiff-fit and --trt do
    written = read_manifest(b)
    assert written["latent_groups"] == [[0]] and written["graphs"]["denoiser"]["chunk"] == 16
    assert written["sampling"]["student"]["kind"] == "consistency"
    assert written["sampling"]["fitted"]["4"]["measured_by"] == "a later fitter"
    assert "quant" not in written["graphs"]["denoiser"]["inputs"][0]
    assert written == {**with_new_keys(read_manifest(OLD[2])), "graphs": written["graphs"]}


# ------------------------------------------------------------------------------------------------ refused


@pytest.mark.parametrize("schema, words", [
    (SCHEMA + 1, "newer toolkit"), (0, "no version of this toolkit wrote"), ("2", "no version"), (True, "no version"),
], ids=["newer", "zero", "string", "bool"])
def test_schema_no_toolkit_reads_is_refused_with_one_line(tmp_path, capsys, schema, words):
    b = copy_tree(OLD[2], tmp_path / "bundle")
    write_manifest(b, {**read_manifest(b), "schema": schema})
    rc, _, err = call(capsys, run_cli, "--bundle", b, "--n", 1, "--out", tmp_path / "out", "--quiet")
    one_error_line(rc, err, "discodiff-run", "schema", words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(graphs=[1, 2]), "graphs: must be an object"),
    (lambda m: m["graphs"]["prior_step"].update(inputs="token"), "inputs must be a non-empty list"),
    (lambda m: m["graphs"]["prior_step"]["inputs"].append(7), "must be an object"),
    (lambda m: m.update(sampling=[]), "sampling: must be an object"),
    (lambda m: m.pop("edm"), "'edm' is missing"),
    (lambda m: m.pop("graphs"), "'graphs' is missing"),
], ids=["graphs_list", "inputs_string", "input_not_object", "sampling_list", "no_edm", "no_graphs"])
def test_malformed_schema1_manifest_gives_one_line(tmp_path, capsys, edit, words):
    """The migration leaves what it cannot read to the schema check: one `malformed` line, no traceback."""
    b = copy_tree(OLD[1], tmp_path / "bundle")
    raw = read_manifest(b)
    edit(raw)
    write_manifest(b, raw)
    with pytest.raises(UserError, match="malformed") as exc:
        load_manifest(b)
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    rc, _, err = call(capsys, run_cli, "--bundle", b, "--n", 1, "--out", tmp_path / "out", "--quiet")
    one_error_line(rc, err, "discodiff-run", "malformed", words)
