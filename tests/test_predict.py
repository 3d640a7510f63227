import warnings

import numpy as np
import pytest
import torch
from conftest import quiet, run_module
from PIL import Image

from mlp_lab.config import load_config
from mlp_lab.data import load_split
from mlp_lab.predict import PredictError, predict_images, prepare_image
from mlp_lab.runs import load_model


def save_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_dark_background_image_is_read_as_is(tmp_path):
    pixels = np.zeros((28, 28), np.uint8)
    pixels[10:18, 5:20] = 200
    x = prepare_image(save_png(tmp_path / "digit.png", pixels))
    assert x.shape == (1, 784)
    torch.testing.assert_close(x, torch.from_numpy(pixels).float().reshape(1, 784) / 255)


def test_light_background_is_inverted_and_large_colour_images_resized(tmp_path):
    pixels = np.full((56, 56, 3), 255, np.uint8)
    pixels[20:36, 10:40] = 0  # black ink on white paper
    x = prepare_image(save_png(tmp_path / "scan.png", pixels)).reshape(28, 28)
    assert x[0].max() == 0 and x[11:17, 6:19].min() > 0.9  # white paper → 0, ink → near 1


@pytest.mark.parametrize(
    "content, message", [(None, "no such file"), (b"not a png", "not a readable image")]
)
def test_bad_image_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PredictError, match=f"{path}: {message}"):
        prepare_image(path)


@pytest.mark.parametrize("side", [40, 50])  # Pillow warns past its limit, refuses past twice it
def test_an_oversized_image_is_one_line_not_a_library_warning(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = save_png(tmp_path / "huge.png", np.zeros((side, side), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        with pytest.raises(PredictError) as caught:
            prepare_image(path)
    assert str(caught.value) == (
        f"{path}: larger than the 1,000 pixels this reads safely; scale it down to a few "
        "hundred pixels a side first"
    )


@pytest.mark.real_data
def test_predicts_real_test_digits_from_png_files(real_data_root, tmp_path, capsys):
    from mlp_lab.train import train

    cfg = load_config(*quiet(real_data_root, "data=mnist", "trainer.max_epochs=2"))
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    model = load_model(run_dir)  # a run directory: its best checkpoint
    x, y = load_split("mnist", real_data_root, "test")
    paths = []
    for i in range(10):
        digit = (x[i].reshape(28, 28) * 255).round().numpy()
        # Every other digit as dark ink on white paper: the inversion must undo it.
        paths.append(str(save_png(tmp_path / f"{i}.png", digit if i % 2 else 255 - digit)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    paths.insert(3, str(broken))

    capsys.readouterr()  # training's own output
    assert predict_images(model, paths) == 1
    out, err = capsys.readouterr()
    assert (
        err.strip()
        == f"error: {broken}: not a readable image (cannot identify image file '{broken}')"
    )
    predicted = [line.split(": ")[1].split(" (")[0] for line in out.splitlines()]
    with torch.no_grad():
        expected = model(x[:10]).argmax(1)
    assert predicted == [str(int(k)) for k in expected]
    assert sum(p == str(int(t)) for p, t in zip(predicted, y[:10], strict=True)) >= 9

    grid = tmp_path / "grid.png"
    result = run_module("mlp_lab.predict", f"ckpt={run_dir}", f"out={grid}", "n=12")
    assert result.returncode == 0 and grid.is_file(), result.stderr
    assert result.stdout.rstrip().endswith(f"grid in {grid}")
