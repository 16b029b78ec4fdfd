"""Typed options: one parser for `convert --option` (a toolchain's OPTIONS) and `--runtime-option`
(a backend's); a key nobody reads is refused before any work, with the valid keys."""

from __future__ import annotations

import pytest
from conftest import cli

from edgeseg.errors import EdgesegError
from edgeseg.options import Option, parse


def test_values_are_typed_and_checked():
    allowed = {"n": Option(int, "a count", 1), "on": Option(bool, "a switch", False),
               "names": Option(list, "a list", []), "how": Option(str, "a choice", "a", ("a", "b"))}
    assert parse(["n=3", "on=yes", "names=x, y", "how=b"], allowed, flag="--option", owner="target 't'") == \
        {"n": 3, "on": True, "names": ["x", "y"], "how": "b"}
    assert parse({"on": False, "names": ["z"]}, allowed, flag="--option", owner="t") == {"on": False, "names": ["z"]}
    with pytest.raises(EdgesegError, match=r"--option how=c: how takes a or b"):
        parse(["how=c"], allowed, flag="--option", owner="t")
    with pytest.raises(EdgesegError, match=r"--option on=maybe: on takes a bool"):
        parse(["on=maybe"], allowed, flag="--option", owner="t")
    with pytest.raises(EdgesegError, match=r"--option nn: not an option of t; t takes KEY=VALUE with KEY one of: "
                                           r"n=int \(a count\); on=bool"):
        parse(["nn=1"], allowed, flag="--option", owner="t")
    with pytest.raises(EdgesegError, match="expected KEY=VALUE"):
        parse(["n"], allowed, flag="--option", owner="t")


def test_every_profile_value_of_a_toolchain_option_has_its_type():
    from edgeseg.convert.toolchains import load_toolchain, resolve_options
    from edgeseg.profiles import available_profiles, load_profile

    for name in available_profiles():
        prof = load_profile(name)
        tc = load_toolchain(prof.toolchain)
        settings = resolve_options(tc, prof)
        assert set(settings) == set(tc.OPTIONS), name
        for k, o in tc.OPTIONS.items():
            assert isinstance(settings[k], o.type), (name, k, settings[k])
            if k in prof.quantization and o.type is not list:
                assert settings[k] == prof.quantization[k], (name, k)  # the profile's value wins over the default
        for k, o in tc.OPTIONS.items():  # and --option wins over the profile
            assert resolve_options(tc, prof, [f"{k}={_other(o)}"])[k] != settings[k], (name, k)


def _other(o: Option) -> str:
    if o.choices:
        return o.choices[-1] if o.default != o.choices[-1] else o.choices[0]
    return {bool: str(not o.default), int: "7", float: "7.5", list: "x,y"}.get(o.type, "other")


@pytest.mark.parametrize("key", ["split_outputs=false", "calibration_images=8", "precisions=x"])
def test_keys_the_toolchain_does_not_read_are_refused_before_any_work(tmp_path, key):
    r = cli("convert", "--target", "rknn", "--option", key, "--out", str(tmp_path / "b"), timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--option {key.split('=')[0]}: not an option of target 'rknn'" in r.stderr
    assert "algorithm=normal|kl_divergence|mmse" in r.stderr and "float_tail=bool" in r.stderr
    assert not (tmp_path / "b").exists()


def test_help_options_lists_a_targets_options_with_its_defaults():
    r = cli("convert", "--target", "edgetpu", "--help-options")
    assert r.returncode == 0 and r.stdout.startswith("io=int8|uint8") and "(default: int8)" in r.stdout
    r = cli("convert", "--target", "rknn", "--help-options")
    assert "disable_rules=list" in r.stdout and "seperate_conv_rs_split" in r.stdout  # the profile's value


def test_a_job_without_calibration_says_which_target_needs_it(tmp_path):
    from edgeseg.convert.toolchains import ConvertJob
    from edgeseg.profiles import load_profile
    from edgeseg.runtime.preprocess import InputSpec

    job = ConvertJob(None, tmp_path / "m.onnx", [], load_profile("openvino"), "int8", None, tmp_path,  # type: ignore[arg-type]
                     input=InputSpec(32, 32))
    with pytest.raises(EdgesegError, match="target 'openvino' needs calibration images for int8; pass --calib"):
        job.calib  # noqa: B018
