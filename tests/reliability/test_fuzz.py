"""Fuzzing the decoder and the manifest parser (hypothesis): only documented errors, outputs in the frame."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseg.bundle import Manifest
from edgeseg.errors import EdgesegError
from edgeseg.runtime.decode import NOT_ASKED, SemanticDecoder, YoloSegDecoder
from edgeseg.runtime.preprocess import letterbox_params

NC, NM = 3, 8
OUTS = []
for s, (stride, g) in enumerate(((8, 8), (16, 4), (32, 2))):
    for role, c in (("box_dfl", 64), ("cls_logits", NC), ("coef", NM)):
        OUTS.append({"name": f"{role}{s}", "role": role, "scale": s, "stride": stride, "shape": [1, c, g, g]})
OUTS.append({"name": "protos", "role": "protos", "scale": None, "stride": 4, "shape": [1, NM, 16, 16]})
HEAD = {"type": "yolo-seg", "layout": "split", "num_classes": NC, "num_masks": NM, "reg_max": 16}
DEC = YoloSegDecoder(HEAD, OUTS, ["a", "b", "c"], (64, 64))

special = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30])


@st.composite
def outputs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["normal", "all-on", "all-off", "huge", "specials"]))
    out = {}
    for o in OUTS:
        x = rng.normal(0, 3, o["shape"]).astype(np.float32)
        if mode == "all-on" and o["role"] == "cls_logits":
            x[:] = 20
        elif mode == "all-off" and o["role"] == "cls_logits":
            x[:] = -20
        elif mode == "huge":
            x *= 1e6
        elif mode == "specials":
            idx = rng.random(x.shape) < 0.1
            x[idx] = draw(special)
        out[o["name"]] = x
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outputs(), st.integers(1, 2000), st.integers(1, 2000), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_decoder_never_fails_and_stays_in_frame(outs, h, w, conf, iou):
    lb = letterbox_params(h, w, 64, 64)
    res = DEC(outs, lb, conf=conf, iou=iou, max_det=300)
    assert len(res.instances) <= 300
    for inst in res.instances:
        x1, y1, x2, y2 = inst.box
        assert np.isfinite(inst.box).all()
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert 0 <= inst.score <= 1 and 0 <= inst.class_id < NC
        if inst.mask is not None:
            mh, mw = inst.mask.shape
            assert inst.mask_x >= 0 and inst.mask_y >= 0 and inst.mask_x + mw <= w and inst.mask_y + mh <= h


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_semantic_decoder_fills_the_frame(h, w, c, seed):
    rng = np.random.default_rng(seed)
    dec = SemanticDecoder({"type": "semantic", "output": "logits"}, [{"name": "y", "role": "logits"}],
                          [str(i) for i in range(max(c, 2))], (32, 32))
    y = rng.normal(0, 1, (1, c, 8, 8)).astype(np.float32)
    res = dec({"y": y}, letterbox_params(h, w, 32, 32))
    assert res.label_map.shape == (h, w) and res.label_map.max() < max(c, 2)
    # --classes: the others become NOT_ASKED (never class 0, a real class), the kept ones stay
    kept = dec({"y": y}, letterbox_params(h, w, 32, 32), classes=[1])
    assert np.array_equal(kept.label_map, np.where(res.label_map == 1, 1, NOT_ASKED))
    assert kept.classes_present() == ([1] if (res.label_map == 1).any() else [])


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["format_version", "target", "precision", "runtime", "model_files", "input",
                                        "head", "names", "outputs", "files", "extra"]), json_values, max_size=11))
def test_manifest_parser_only_raises_edgeseg_errors(d):
    try:
        Manifest.from_dict(json.loads(json.dumps(d, allow_nan=True)), "fuzz.json")
    except EdgesegError:
        pass


def test_valid_manifest_survives_field_mutations(int8_bundle):
    base = json.loads((int8_bundle.path / "edgeseg.json").read_text())
    Manifest.from_dict(base, "ok")
    for k in list(base):
        for bad in (None, 1, "x", [], {}):
            d = dict(base, **{k: bad})
            try:
                Manifest.from_dict(d, "mutated")
            except EdgesegError as e:
                assert "rebuild the bundle" in str(e)


def _paths(d, prefix=()):
    """Every (path, value) of a nested JSON value."""
    yield prefix, d
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, (*prefix, i))


def _set(d, path, value):
    d = json.loads(json.dumps(d))
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_nested_mutations_only_raise_edgeseg_errors(int8_bundle, data):
    """Any field at any depth of a real manifest replaced by any JSON value: a manifest either
    loads with the types a runtime relies on, or fails in one documented error."""
    base = json.loads((int8_bundle.path / "edgeseg.json").read_text())
    paths = [p for p, _ in _paths(base) if p]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(json_values | st.sampled_from([-1, 0, 2**63, 1e308, float("nan"), "yolo-det", [None] * 3]))
    d = _set(base, path, value)
    try:
        m = Manifest.from_dict(json.loads(json.dumps(d, allow_nan=True)), "fuzz.json")
    except EdgesegError as e:
        assert "\n" not in str(e)
        return
    # what loaded is usable: the fields a runtime reads have their types and ranges
    assert m.head["type"] in ("yolo-seg", "yolo26-seg", "semantic") and 1 <= m.input_hw[0] <= 8192
    for o in m.outputs:
        q = o.get("quant")
        assert q is None or (np.isfinite(q["scale"]) and q["scale"] > 0)


def test_deeply_nested_manifest_is_one_line(tmp_path):
    from edgeseg.bundle import Bundle

    (tmp_path / "edgeseg.json").write_text("[" * 100_000 + "]" * 100_000)
    try:
        Bundle.load(tmp_path)
    except EdgesegError as e:
        assert "edgeseg.json" in str(e)
    else:
        raise AssertionError("loaded")


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                         st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=8), st.integers(-3, 5)), c, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["path", "train", "val", "test", "names", "nc", "download"]), yaml_values,
                       max_size=6))
def test_dataset_reader_only_raises_edgeseg_errors(tmp_path_factory, cfg):
    import yaml

    from edgeseg.data import load_dataset

    p = tmp_path_factory.mktemp("ds") / "d.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    try:
        ds = load_dataset(p)
    except EdgesegError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(n, str) for n in ds.names)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_dataset_reader_on_arbitrary_bytes(tmp_path_factory, raw):
    from edgeseg.data import load_dataset

    p = tmp_path_factory.mktemp("ds") / "d.yaml"
    p.write_bytes(raw)
    try:
        load_dataset(p)
    except EdgesegError as e:
        assert "\n" not in str(e)


# not wrong, so not in the cases below: an empty record of how the bundle was made, a free-form version
# string, format_version 1 (the version this edgeseg reads), and a target's name (informational: a
# plugin target may have any name; the runtime that opens the bundle is checked)
NOT_BAD = {("target", "'x'"), ("source", "{}"), ("quantization", "{}"), ("toolchain", "{}"), ("fidelity", "{}"),
           ("profile", "{}"), ("edgeseg_version", "'x'"), ("format_version", "1")}
MUTATIONS = [pytest.param(k, bad, id=f"{k}={bad!r}")
             for k in Manifest.__dataclass_fields__ for bad in (None, 1, "x", [], {}) if (k, repr(bad)) not in NOT_BAD]


def test_valid_manifest_is_accepted(int8_bundle):
    Manifest.from_dict(json.loads((int8_bundle.path / "edgeseg.json").read_text()), "ok")


@pytest.mark.parametrize("k,bad", MUTATIONS)
def test_a_bad_manifest_value_is_refused(int8_bundle, k, bad):
    d = dict(json.loads((int8_bundle.path / "edgeseg.json").read_text()), **{k: bad})
    with pytest.raises(EdgesegError, match="rebuild the bundle"):
        Manifest.from_dict(d, "mutated")
