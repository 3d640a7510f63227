import warnings

import numpy as np
import pytest
import torch
from commands import run_module
from conftest import quiet
from PIL import Image, ImageDraw

from mlp_lab.checkpoints import load_model
from mlp_lab.datasets import load_split
from mlp_lab.predict import PredictError, predict_images, prepare_image
from mlp_lab.train import load_config


def save_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_an_image_framed_as_mnist_frames_its_digits_comes_out_as_it_went_in(tmp_path):
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:24, 4:24] = 200  # a 20×20 box, its centre of mass at (13.5, 13.5)
    x = prepare_image(save_png(tmp_path / "digit.png", pixels))
    assert x.shape == (1, 784)
    torch.testing.assert_close(x, torch.from_numpy(pixels).float().reshape(1, 784) / 255)


def test_light_background_is_inverted_and_large_colour_images_framed(tmp_path):
    pixels = np.full((56, 56, 3), 255, np.uint8)
    pixels[20:36, 10:40] = 0  # black ink on white paper, a 16×30 box
    x = prepare_image(save_png(tmp_path / "scan.png", pixels)).reshape(28, 28)
    # White paper → 0; the box scaled to 11×20, its middle at (14, 14): rows 9-19, columns 4-23.
    assert x[0].max() == 0 and x[10:19, 5:23].min() > 0.9
    assert x[:8].max() < 0.05 and x[21:].max() < 0.05


def seven(sheet: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A black 7 of two strokes filling `box` (left, top, right, bottom) on a white sheet."""
    image = Image.new("L", sheet, 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    width = max(1, (right - left) // 6)
    draw.line([(left, top), (right, top)], fill=0, width=width)
    draw.line([(right, top), (left + (right - left) // 3, bottom)], fill=0, width=width)
    return image


def centre_of_mass(x: torch.Tensor) -> tuple[float, float]:
    weights, index = x / x.sum(), torch.arange(28.0)
    return float(weights.sum(1) @ index), float(weights.sum(0) @ index)


def extent(x: torch.Tensor) -> tuple[int, int]:
    rows, cols = x.gt(0).any(1).nonzero(), x.gt(0).any(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize(
    "sheet, box",
    [
        ((300, 200), (10, 10, 70, 110)),  # off-centre, in a corner
        ((120, 160), (4, 4, 115, 155)),  # full-frame
        ((400, 400), (300, 250, 312, 270)),  # small
    ],
    ids=["off-centre", "full-frame", "small"],
)
def test_a_drawn_digit_is_framed_as_mnist_frames_its_digits(sheet, box, tmp_path):
    path = tmp_path / "seven.png"
    seven(sheet, box).save(path)
    x = prepare_image(path, "mnist").reshape(28, 28)
    row, col = centre_of_mass(x)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert max(extent(x)) in (
        19,
        20,
    )  # the box's longer side, scaled to 20 (resampling may blur it)


def test_a_photographed_item_is_framed_as_fashion_mnist_frames_its_items(tmp_path):
    pixels = np.full((300, 400), 230, np.uint8)  # grey-white paper
    pixels[200:260, 40:200] = 30  # a dark, wide item low in the left half: 60×160
    x = prepare_image(save_png(tmp_path / "shoe.png", pixels), "fashion_mnist").reshape(28, 28)
    rows, cols = extent(x)
    assert cols == 28 and rows in (10, 11, 12)  # 160 → 28 wide, 60 → 10.5 high
    above, below = int(x.gt(0).any(1).nonzero().min()), 27 - int(x.gt(0).any(1).nonzero().max())
    assert abs(above - below) <= 1  # its middle at the middle


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
    from mlp_lab.fit import train

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
    assert sum(p == str(int(t)) for p, t in zip(predicted, y[:10], strict=True)) >= 9
    # MNIST's digits are framed already: framing them again changes them little.
    framed = torch.cat([prepare_image(p) for p in paths if p != str(broken)])
    assert (framed - x[:10]).abs().mean() < 0.03

    grid = tmp_path / "grid.png"
    result = run_module("mlp_lab.predict", f"ckpt={run_dir}", f"out={grid}", "n=12")
    assert result.returncode == 0 and grid.is_file(), result.stderr
    assert result.stdout.rstrip().endswith(f"grid in {grid}")
