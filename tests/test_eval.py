import json

import pytest
import torch
from commands import run_module
from conftest import (
    CONF_DIR,
    FACTS,
    datamodule,
    fast_overrides,
    quiet_trainer,
    synthetic_images,
    write_idx,
)
from hydra import compose, initialize_config_dir

from mlp_lab.checkpoints import load_model
from mlp_lab.datasets import idx_files
from mlp_lab.eval import run, save
from mlp_lab.fit import train
from mlp_lab.module import MLPClassifier
from mlp_lab.train import load_config


def evaluate(*overrides: str):
    """`python -m mlp_lab.eval <overrides>`, in this process: its record and file."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return run(compose(config_name="eval", overrides=list(overrides)))


@pytest.fixture
def trained(synthetic_root, tmp_path):
    """A finished one-epoch run on the synthetic data: its directory and record."""
    cfg = load_config(*fast_overrides(synthetic_root, "trainer.max_epochs=1", "model.hidden=[16]"))
    run_dir = tmp_path / "run"
    return run_dir, train(cfg, run_dir)


def save_checkpoint(module: MLPClassifier, path):
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_eval_of_a_run_reproduces_its_test_scores_and_keeps_them_beside_it(trained, synthetic_root):
    run_dir, record = trained
    before = (run_dir / "metrics.json").read_bytes()
    result, path = evaluate(f"ckpt={run_dir}", f"data.root={synthetic_root}")

    assert result["test_acc"] == pytest.approx(record["test_acc"], abs=1e-6)
    assert result["test_loss"] == pytest.approx(record["test_loss"], abs=1e-6)
    assert path.parent == run_dir and path.name.startswith("eval-")
    figure = run_dir / f"{path.stem}-confusion.png"
    assert json.loads(path.read_text()) == {**result, "confusion_figure": figure.name}
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "metrics.json").read_bytes() == before
    ckpt = run_dir / record["checkpoint"]
    assert result["checkpoint"] == str(ckpt.resolve())
    assert (result["dataset"], result["data_root"]) == ("fashion_mnist", str(synthetic_root))

    # The counts, checked against predictions made here with the model alone.
    model = load_model(ckpt)
    dm = datamodule("fashion_mnist", synthetic_root)
    dm.setup("test")
    x, y = dm.splits["test"]
    with torch.no_grad():
        right = model(x).argmax(1) == y
    assert result["n_images"] == len(y) == 200
    confusion = torch.tensor(result["confusion"])
    assert confusion.sum() == 200 and confusion.trace() == right.sum()
    assert result["test_acc"] == pytest.approx(right.float().mean().item(), abs=1e-6)
    names = dm.class_names
    for k, name in enumerate(names):
        expected = right[y == k].float().mean().item()
        assert result["per_class_acc"][name] == pytest.approx(expected, abs=1e-6), name
    assert list(result["per_class_acc"]) == names


def test_a_checkpoint_files_evaluation_goes_to_its_run_or_beside_it_replacing_nothing(
    trained, synthetic_root
):
    run_dir, record = trained
    ckpt = run_dir / record["checkpoint"]  # in the run's checkpoints/: the files go to the run
    result, first = evaluate(f"ckpt={ckpt}", f"data.root={synthetic_root}")
    assert first.parent == run_dir and result["test_acc"] == record["test_acc"]
    kept = first.read_bytes()
    again = save(result, run_dir)  # as a second evaluation started in the same second
    assert again == run_dir / f"{first.stem}_2.json" and first.read_bytes() == kept
    assert (run_dir / f"{first.stem}_2-confusion.png").is_file()
    assert json.loads(again.read_text())["confusion_figure"] == f"{first.stem}_2-confusion.png"

    elsewhere = run_dir.parent / "model.ckpt"
    elsewhere.write_bytes(ckpt.read_bytes())
    result, beside = evaluate(f"ckpt={elsewhere}", "data=mnist", f"data.root={synthetic_root}")
    assert beside.parent == run_dir.parent and result["dataset"] == "mnist"
    assert list(result["per_class_acc"]) == [str(d) for d in range(10)]


def test_the_command_prints_one_line_and_writes_only_its_two_files(trained, synthetic_root):
    run_dir, record = trained
    before = {p for p in run_dir.rglob("*")}
    result = run_module("mlp_lab.eval", f"ckpt={run_dir}", f"data.root={synthetic_root}")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    (path,) = run_dir.glob("eval-*.json")
    ckpt = (run_dir / record["checkpoint"]).resolve()
    assert line == (
        f"test_acc={record['test_acc']:.4f} test_loss={record['test_loss']:.4f} "
        f"dataset=fashion_mnist images=200 ckpt={ckpt} -> {path}"
    )
    assert {p for p in run_dir.rglob("*")} - before == {
        path,
        path.with_name(f"{path.stem}-confusion.png"),
    }
    # On the other dataset, a note says what its accuracy means.
    other = run_module(
        "mlp_lab.eval", f"ckpt={run_dir}", f"data.root={synthetic_root}", "data=mnist"
    )
    assert other.returncode == 0 and other.stdout.startswith("test_acc=")
    assert other.stderr == (
        "note: the checkpoint learnt fashion_mnist, whose classes are other things than mnist's: "
        "test_acc counts class numbers that happen to match\n"
    )


@pytest.fixture
def other_model(tmp_path):
    """A checkpoint of a model of 100 inputs and 5 classes."""
    trained_on = {**FACTS, "in_features": 100, "num_classes": 5, "class_names": list("abcde")}
    module = MLPClassifier.from_config(load_config("model.hidden=[8]"), trained_on)
    return save_checkpoint(module, tmp_path / "other.ckpt")


@pytest.fixture
def broken_root(tmp_path):
    """A data root whose Fashion-MNIST test images are cut short."""
    raw = tmp_path / "broken" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "test"):
        images, labels = synthetic_images(20, 0)
        image_file, label_file = idx_files(split)
        write_idx(raw / image_file, images)
        write_idx(raw / label_file, labels)
    cut = raw / idx_files("test")[0]
    cut.write_bytes(cut.read_bytes()[:1000])
    return tmp_path / "broken"


def test_bad_input_is_one_error_line_and_nothing_is_written(tmp_path, other_model, broken_root):
    fine = save_checkpoint(
        MLPClassifier.from_config(load_config("model.hidden=[8]"), FACTS), tmp_path / "fine.ckpt"
    )
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    missing = tmp_path / "missing.ckpt"
    cut = broken_root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    cases = [
        ((), "error: give the checkpoint: ckpt=<run dir or .ckpt file>"),
        ((f"ckpt={missing}",), f"error: checkpoint {missing} not found"),
        ((f"ckpt={text}",), f"error: {text} is not a checkpoint: "),
        (
            (f"ckpt={other_model}", "data=fashion_mnist"),
            f"error: {other_model} was trained on 100 inputs and 5 classes; fashion_mnist has "
            "784 inputs and 10 classes: give a checkpoint of a model trained on mnist or "
            "fashion_mnist",
        ),
        (
            (f"ckpt={fine}", f"data.root={broken_root}", "data.download=false"),
            f"error: {cut} has 1000 bytes, expected {16 + 20 * 784} for shape [20, 28, 28] "
            "(truncated?): delete it and run `python -m mlp_lab.data`",
        ),
    ]
    before = sorted(tmp_path.rglob("*"))
    for args, message in cases:
        result = run_module("mlp_lab.eval", *args)
        assert result.returncode == 1 and result.stdout == "", (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith(message), (args, line)
    assert sorted(tmp_path.rglob("*")) == before
