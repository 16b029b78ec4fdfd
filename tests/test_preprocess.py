import numpy as np
import pytest

from edgeseg.runtime.preprocess import letterbox, letterbox_params, preprocess


@pytest.mark.parametrize("h,w", [(320, 320), (300, 480), (480, 640), (500, 300), (251, 333), (720, 1280), (1, 500)])
def test_letterbox_matches_ultralytics_rule(h, w):
    lb = letterbox_params(h, w, 320, 320)
    r = min(320 / h, 320 / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    assert (lb.new_w, lb.new_h) == (new_w, new_h)
    assert lb.pad_x == round((320 - new_w) / 2 - 0.1) and lb.pad_y == round((320 - new_h) / 2 - 0.1)
    img, lb2 = letterbox(np.full((h, w, 3), 7, np.uint8), (320, 320))
    assert img.shape == (320, 320, 3) and lb2 == lb
    # the content sits exactly where the parameters say, padding is 114 elsewhere
    assert (img[lb.pad_y:lb.pad_y + new_h, lb.pad_x:lb.pad_x + new_w] == 7).all()
    assert img.sum() == 7 * 3 * new_w * new_h + 114 * 3 * (320 * 320 - new_w * new_h)


def test_to_source_inverts_the_letterbox():
    lb = letterbox_params(300, 480, 320, 320)
    src = np.array([[10.0, 20.0, 400.0, 290.0]])
    model = src.copy()
    model[:, [0, 2]] = model[:, [0, 2]] * lb.scale_x + lb.pad_x
    model[:, [1, 3]] = model[:, [1, 3]] * lb.scale_y + lb.pad_y
    np.testing.assert_allclose(lb.to_source(model), src, atol=1e-4)
    # outside the frame is clipped to it
    assert (lb.to_source(np.array([[-50.0, -50.0, 999.0, 999.0]])) == [[0, 0, 480, 300]]).all()


def test_input_layouts_and_rgb_order():
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    x, _ = preprocess(frame, (10, 10))
    assert x.shape == (1, 3, 10, 10) and x.dtype == np.float32
    assert x[0, 2].max() == 1.0 and x[0, 0].max() == 0.0  # blue lands in the last (B of RGB) channel
    u, _ = preprocess(frame, (10, 10), layout="nhwc", dtype="uint8")
    assert u.shape == (1, 10, 10, 3) and u.dtype == np.uint8 and u[0, 0, 0, 2] == 255


def test_files_handed_to_vendor_tools_hold_the_runtime_input(tmp_path):
    """Toolchains in other processes read calibration from files: .npy arrays and letterboxed PNGs
    must be exactly what the runtime's preprocessing gives, in every layout and dtype asked for."""
    import cv2
    from conftest import VAL_IMAGES

    from edgeseg.convert.calibration import CalibrationSet, save_inputs
    from edgeseg.runtime.replay import input_digest
    from edgeseg.runtime.sources import read_image

    cal = CalibrationSet.from_path(VAL_IMAGES, n=9, holdout=2)
    hw = (256, 320)
    for layout, dtype in (("nchw", "float32"), ("nhwc", "uint8"), ("nchw", "uint8")):
        listing = cal.save_arrays(tmp_path / f"{layout}{dtype}", hw, layout, dtype)
        files = listing.read_text().split()
        assert len(files) == 9
        for f, x in zip(files, cal.arrays(hw, layout, dtype, progress=False)):
            assert np.array_equal(np.load(f), x) and np.load(f).dtype == x.dtype
    pngs = cal.save_images(tmp_path / "png", hw)
    for f, p in zip(pngs, cal.images):
        assert np.array_equal(cv2.imread(str(f)), letterbox(read_image(p), hw)[0])
    sims = save_inputs(cal.holdout, tmp_path / "sim", hw, "nhwc", "uint8", "sim")
    assert [d for _, d in sims] == [input_digest(preprocess(read_image(p), hw, "nhwc", "uint8")[0])
                                    for p in cal.holdout]
