import re

import pytest
from commands import run_module

from mlp_lab.datasets import PROJECT_DIR

GROUPS = [
    p.name for p in sorted((PROJECT_DIR / "conf").iterdir()) if p.is_dir() and p.name != "hydra"
]


def help_text(module: str, flag: str = "--help") -> str:
    result = run_module(module, flag)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def test_train_help_lists_the_groups_the_first_commands_and_where_runs_go():
    text = help_text("mlp_lab.train")
    assert text.startswith("mlp_lab.train: train one configurable MLP")
    # Every group of conf/ with exactly its options, as the files in its folder name them.
    listed = dict(re.findall(r"^(\w+): (.+)$", text, re.MULTILINE))
    assert set(GROUPS) >= {"data", "model", "loss", "optimizer", "trainer", "experiment"}
    assert "hparams_search" in GROUPS
    for group in GROUPS:
        options = sorted(p.stem for p in (PROJECT_DIR / "conf" / group).glob("*.yaml"))
        assert listed[group].split(", ") == options, group
    assert {"fashion_mnist", "three_hidden", "focal"} <= {
        option for group in ("data", "model", "loss") for option in listed[group].split(", ")
    }
    commands = [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith(("python", "tensorboard"))
    ]
    for wanted in (
        "train -m ",
        "resume=outputs/runs/<run>",
        "-m mlp_lab.report ",
        "-m mlp_lab.eval ckpt=",
        "tensorboard --logdir outputs",
        "--cfg job",
        "--info",
    ):
        assert any(wanted in command for command in commands), wanted
    assert (
        "outputs/runs/<date>_<time>/" in text
        and "outputs/multirun/" in text
        and "outputs/studies/" in text
    )
    # Not the composed config: that is --cfg job's.
    assert "eval_batch_size:" not in text and "max_epochs:" not in text


def test_hydras_own_help_is_still_there():
    text = help_text("mlp_lab.train", "--hydra-help")
    assert "== Flags ==" in text and "--cfg,-c : Show config instead of running" in text
    assert re.search(r"^hydra/launcher: .*joblib.*slurm", text, re.MULTILINE)


@pytest.mark.parametrize(
    "name, commands, config_key",
    [
        (
            "predict",
            ["mlp_lab.predict ckpt=outputs/runs/<run> images=[", "mlp_lab.predict --cfg job"],
            "top: 3",
        ),
        ("xor", ["mlp_lab.xor xor.seed=0 xor.seeds=20", "mlp_lab.xor --interactive"], "log_every:"),
        (
            "eval",
            ["mlp_lab.eval ckpt=outputs/runs/<run>", "data=mnist data.root="],
            "eval_batch_size:",
        ),
    ],
)
def test_each_tool_has_its_own_help(name, commands, config_key):
    text = help_text(f"mlp_lab.{name}")
    assert text.startswith(f"mlp_lab.{name}: ")
    for command in commands:
        assert command in text
    assert "--hydra-help" in text
    # Neither its composed config nor mlp_lab.train's groups, which it does not take.
    assert config_key not in text
    assert not re.search(r"^(model|experiment|hparams_search): ", text, re.MULTILINE)
