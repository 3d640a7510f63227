"""mlp_lab installed as a user installs it, run from a folder of the user's own: a wheel, and pip's
default editable install. Each in an interpreter of its own whose path holds this environment's
dependencies but not the project's folder."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_overrides
from PIL import Image

from mlp_lab.datasets import PROJECT_DIR

SITE = sysconfig.get_paths()["purelib"]  # torch, Lightning, Hydra, ...: this environment's


def isolated_python(root: Path, *paths: Path) -> Path:
    """A venv that sees `paths` and this environment's packages (pip and setuptools too), not the
    project's folder."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    # A .pth line adds a folder to the path without reading the .pth files in it: this
    # environment's own, which put the project's folder on the path, stay out.
    (site / "deps.pth").write_text("\n".join(map(str, [*paths, SITE])) + "\n")
    return venv / "bin" / "python"


def run(python: Path, cwd: Path, *args: str, env: dict | None = None) -> str:
    """The command's last line of output; it must exit 0."""
    result = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, (args, result.stderr[-3000:])
    return (result.stdout.strip() or result.stderr.strip()).splitlines()[-1]


def train_and_search(python: Path, home: Path, root: Path) -> None:
    """Train and search from `home`, an empty folder: the configs and the sweeper are found."""
    quick = fast_overrides(root, "trainer.max_epochs=1", "model.hidden=[16]")
    assert run(python, home, "-m", "mlp_lab.train", *quick).startswith("test_acc=")
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweep.dir=search"]
    assert run(python, home, "-m", "mlp_lab.train", *search, *quick) == (
        "2 trials: 2 completed (report: python -m mlp_lab.report search)"
    )


def every_command(python: Path, home: Path, root: Path) -> None:
    """Train, search, predict and report from `home`, an empty folder: each ends as usual."""
    train_and_search(python, home, root)
    (run_dir,) = (home / "outputs" / "runs").iterdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(home / "blank.png")
    line = run(python, home, "-m", "mlp_lab.predict", f"ckpt={run_dir}", "images=[blank.png]")
    assert line.startswith("blank.png: ")
    assert run(python, home, "-m", "mlp_lab.report", "outputs", "search") == "outputs/report.md"
    assert (home / "optuna.db").is_file() or (home / "outputs" / "optuna.db").is_file()


def test_a_wheel_carries_the_configs_and_every_command_runs_from_any_folder(
    synthetic_root, tmp_path
):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(PROJECT_DIR)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = wheels.glob("mlp_lab-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target)]
        + [str(wheel)],
        check=True,
    )
    conf = PROJECT_DIR / "conf"
    carried = {p.relative_to(target / "mlp_lab" / "conf") for p in target.rglob("conf/**/*.yaml")}
    assert carried == {p.relative_to(conf) for p in conf.rglob("*.yaml")}  # every group's
    python = isolated_python(tmp_path, target)
    home = tmp_path / "home"
    home.mkdir()
    every_command(python, home, synthetic_root)
    # A console script, as pip wrote it, run by this interpreter: the XOR net's last line.
    last = run(python, home, str(target / "bin" / "mlp-lab-xor"))
    assert last.startswith("solved by the net: outputs 0, 1, 1, 0 rounded; loss ")
    a_lab_from_an_empty_folder(python, tmp_path / "lab-home", synthetic_root, target)


def a_lab_from_an_empty_folder(python: Path, home: Path, root: Path, site: Path) -> None:
    """The lab's console script from an empty folder: the datasets land in its data/, as
    torchvision's root would, never in the installed package; the report is written."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLP_LAB_DATA"}
    line = run(python, home, "-m", "mlp_lab.data", "--from", str(root), env=env)
    assert line == f"Fashion-MNIST: {home / 'data' / 'FashionMNIST' / 'raw'}"
    assert not [p for p in site.rglob("*") if "ubyte" in p.name]
    tiny = fast_overrides(root, "trainer.max_epochs=1", "model.hidden=[16]")[1:]  # no data.root
    lab = [str(site / "bin" / "mlp-lab-lab"), "--studies", "batch_norm", "--seeds", "0"]
    line = run(python, home, *lab, "--xor-seeds", "2", *tiny, env=env)
    assert line.startswith("the report: outputs/lab/report.html;")
    assert (home / "outputs" / "lab" / "report.html").is_file()


def test_a_default_editable_install_finds_the_configs_and_the_sweeper_from_any_folder(
    synthetic_root, tmp_path
):
    python = isolated_python(tmp_path)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e"]
        + [str(PROJECT_DIR)],
        check=True,
        capture_output=True,
    )
    home = tmp_path / "home"
    home.mkdir()
    # What depends on how mlp_lab is installed; predict and report read the same configs.
    train_and_search(python, home, synthetic_root)


@pytest.fixture(autouse=True)
def _no_build_leftovers():
    """The builds leave their egg-info and build/ in the project: take them away again."""
    before = {p.name for p in PROJECT_DIR.iterdir()}
    yield
    for path in PROJECT_DIR.iterdir():
        if path.name not in before and path.name in ("build", "mlp_lab.egg-info"):
            subprocess.run(["rm", "-rf", str(path)], check=True)


def test_after_make_data_a_fresh_checkout_trains_with_nothing_exported(real_data_root, tmp_path):
    # A fresh checkout of this tree: the files git would commit, nothing the set-up made here.
    checkout = tmp_path / "checkout"
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listed, cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    for name in files.stdout.splitlines():
        if (PROJECT_DIR / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_DIR / name, checkout / name)
    venv = Path(sys.executable).parent.parent  # this environment, installed already
    # The README's set-up, `make data`, with the datasets beside the project as in CI.
    make = ["make", "-C", str(checkout), "data", f"VENV={venv}", f"SHARED_DATA={real_data_root}"]
    env = {k: v for k, v in os.environ.items() if k != "MLP_LAB_DATA"}
    done = subprocess.run(
        [*make, "-o", f"{venv}/.installed"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (checkout / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    # Then the README's first command, from the checkout's root, with MLP_LAB_DATA unset.
    command = [sys.executable, "-m", "mlp_lab.train", "trainer.max_epochs=1"]
    trained = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.strip().splitlines()[-1].startswith("test_acc=")
    (run,) = (checkout / "outputs" / "runs").iterdir()
    assert (run / "metrics.json").is_file()
