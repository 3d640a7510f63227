"""The whole lab in one command: every study's runs in one queue, longest first, each distinct run
trained once, the XOR question beside them, then the report.

python -m mlp_lab.lab                              # every study over seeds 0-4 into outputs/lab
python -m mlp_lab.lab --seeds 0,1,2 --studies depth,width trainer.max_epochs=2
python -m mlp_lab.lab --resume                     # finish what a stopped lab left
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from mlp_lab import cluster, directories, resume, runs
from mlp_lab.cli import CONF_DIR
from mlp_lab.config import TrainConfig
from mlp_lab.loggers import flatten, is_logistics
from mlp_lab.report.write import write_report
from mlp_lab.sweeps import local

# Single long runs and the 27 sizes of the lab's question 1 are not studies of the lab's report:
# `--studies complexity` runs the latter.
NOT_IN_THE_LAB = ("best_fashion", "best_mnist", "complexity")
XOR = "xor"
LAB_RECORD = "lab.json"  # the machine and its measured matmul peak, for the report's floor


def lab_studies() -> list[str]:
    found = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))
    return [name for name in found if name not in NOT_IN_THE_LAB]


def quiet(job: Callable[[], None], log_file: Path) -> Callable[[], None]:
    """`job` with its console output kept in `log_file`, so that the lab's lines stay readable."""

    def run() -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        job()

    return run


def command(module: str, *argv: str) -> Callable[[], None]:
    """`python -m <module> <argv>`, run by the launcher in a forked process."""

    def run() -> None:
        sys.argv = [module, *argv]
        importlib.import_module(module).main()

    return run


def plan(studies: list[str], seeds: str, out: Path, overrides: list[str]) -> list[str]:
    """Each study's sweep written out under out/<study> (hydra/launcher=plan), nothing trained;
    the studies whose settings were refused, each having said why."""
    jobs = [
        command(
            "mlp_lab.train",
            *("-m", f"experiment={study}", f"seed={seeds}", f"hydra.sweep.dir={out / study}"),
            *("hydra/launcher=plan", "num_threads=1", *overrides),
        )
        for study in studies
    ]
    endings = local.run_jobs([_without_summary(job) for job in jobs], 2, 1)
    return [s for s, e in zip(studies, endings, strict=True) if not _planned(e)]


def _without_summary(job: Callable[[], None]) -> Callable[[], None]:
    """A planned sweep's summary line would count runs that have not run."""

    def run() -> None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (the process ends with the job)
        job()

    return run


def _planned(ending: local.Ending) -> bool:
    return ending.died_of is None and not isinstance(ending.result, BaseException)


def training_key(config: dict) -> str:
    """What decides a run's weights: its settings less logistics and the study's words."""
    settings = {k: v for k, v in flatten(config).items() if not is_logistics(k)}
    return json.dumps(settings, sort_keys=True, default=str)


def saved_config(run_dir: Path) -> dict:
    """A planned run's config, as its record will keep it."""
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    return OmegaConf.to_container(merged)


def cost(config: dict) -> float:
    """A run's arithmetic, up to a constant: epochs × training images × multiply-adds per image."""
    widths = [784, *config["model"]["hidden"], 10]
    macs = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    images = config["data"]["train_size"] or 60_000 - config["data"]["val_size"]
    return config["trainer"]["max_epochs"] * images * macs


def link_same(copy: Path, original: Path) -> None:
    """`copy`'s record: the results of the run trained with the same settings and seed."""
    record = runs.read_record(original)
    record["config"] = saved_config(copy)
    record["same_as"] = os.path.relpath(original, copy)
    record.pop("prefix_of", None)
    if "checkpoint" in record:
        record["checkpoint"] = os.path.relpath(original / record["checkpoint"], copy)
    runs.write_record(copy, record)


class Progress:
    """A line per finished run: how many done, elapsed, and the end estimated from the cost done."""

    def __init__(self, out: Path, costs: list[float], reused: int):
        self.out, self.costs, self.reused = out, costs, reused
        self.start, self.done, self.cost_done = time.monotonic(), 0, 0.0

    def ended(self, run_dir: Path, status: runs.Status, index: int) -> None:
        self.done += 1
        self.cost_done += self.costs[index]
        elapsed = time.monotonic() - self.start
        left = elapsed * (sum(self.costs) - self.cost_done) / max(self.cost_done, 1)
        name = os.path.relpath(run_dir, self.out)
        print(
            f"[{self.done}/{len(self.costs)}] {name}: {status}; {self.reused} reused; "
            f"{_minutes(elapsed)} elapsed, about {_minutes(left)} left",
            flush=True,
        )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def distinct(todo: list[Path], finished: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """The runs to train, and (copy, original) for each run the same as another."""
    keys = {training_key(runs.read_record(d)["config"]): d for d in reversed(finished)}
    train, same = [], []
    for run_dir in todo:
        key = training_key(saved_config(run_dir))
        if key in keys:
            same.append((run_dir, keys[key]))
        else:
            keys[key] = run_dir
            train.append(run_dir)
    return train, same


def chains(train: list[Path]) -> list[list[Path]]:
    """The runs to train grouped shortest first, each group's runs the first epochs of its last:
    the same settings but their length, none tied to it (no schedule, no early stopping)."""
    groups: dict[str, list[Path]] = {}
    for run_dir in train:
        config = saved_config(run_dir)
        stops_early = config["callbacks"]["early_stopping"] is not None
        free = config["optimizer"]["schedule"] == "none" and not stops_early
        fresh = not (run_dir / runs.RECORD).is_file()  # a run begun alone finishes alone
        config["trainer"]["max_epochs"] = None
        key = training_key(config) if free and fresh else str(run_dir)
        groups.setdefault(key, []).append(run_dir)
    epochs = {d: saved_config(d)["trainer"]["max_epochs"] for d in train}
    return [sorted(group, key=epochs.__getitem__) for group in groups.values()]


def chain_job(chain: list[Path], threads: int) -> Callable[[], None]:
    """Train the chain's last run, stopping at each shorter run's length to copy it: resuming is
    exact, so each is the run it would be trained alone."""
    last = chain[-1]
    if len(chain) == 1:  # trained in the queue's own process, no fork between
        return quiet(resume.resume_job(last), last / "console.log")

    def run() -> None:
        for run_dir in chain:
            epochs = saved_config(run_dir)["trainer"]["max_epochs"]
            step = command(
                "mlp_lab.train", f"resume={last}", "trainer.enable_progress_bar=false",
                f"trainer.max_epochs={epochs}",
            )  # fmt: skip
            (ending,) = local.run_jobs([quiet(step, last / "console.log")], 1, threads)
            if not local.record_ending(last, ending).ended:
                return
            if run_dir != last:
                copy_prefix(last, run_dir)

    return run


def copy_prefix(run: Path, prefix: Path) -> None:
    """`prefix`'s files and record: those of `run` as it stands, trained for `prefix`'s epochs."""
    for item in run.iterdir():
        if item.name in (".hydra", "console.log", "train.log"):
            continue
        if item.is_dir():
            shutil.copytree(item, prefix / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, prefix / item.name)
    record = runs.read_record(prefix)
    record["config"] = saved_config(prefix)
    record["prefix_of"] = os.path.relpath(run, prefix)
    runs.write_record(prefix, record)


def train_queue(out: Path, jobs: int | None, extra: list[Callable[[], None]]) -> bool:
    """Train every unfinished run under `out` once per distinct run, longest first, then the
    `extra` jobs; the others become the run trained with their settings and seed. Whether all
    ended well."""
    todo, left = resume.unfinished(out)
    for line in left:
        print(f"left alone: {line}")
    finished = [d for d in directories.find_runs(out) if _ended(d)]
    train, same = distinct(todo, finished)
    costs = {d: cost(saved_config(d)) for d in train}
    queue = sorted(chains(train), key=lambda chain: costs[chain[-1]], reverse=True)
    gpus = local.pool_devices("auto")  # on a machine with GPUs the queue feeds the device pool
    pool = local.DevicePool(gpus, per_device=4) if gpus else None
    n_jobs, threads = local.job_shares(jobs or (len(gpus) * 4 if gpus else None), 1)
    measured = json.loads((out / LAB_RECORD).read_text())
    peak = measured.get("bfloat16_matmul_gflops") or measured["float32_matmul_gflops"]
    floor = sum(6 * costs[c[-1]] for c in queue) / (peak * 1e9)  # 3 passes, 2 FLOPs a mul-add
    print(
        f"lab: {len(todo) + len(finished)} runs under {out}: {len(train)} to train "
        f"({len(train) - len(queue)} as the first epochs of a longer one), {len(same)} the "
        f"same as another (trained once), {len(finished)} done already; {n_jobs} at a time, "
        f"{threads} thread{'s' * (threads > 1)} each; at least {_minutes(floor)} at this "
        "machine's matmul peak (the lines below estimate the end)",
        flush=True,
    )
    for copy, original in same:
        if original in finished:
            link_same(copy, original)
    progress = Progress(out, [costs[c[-1]] for c in queue], len(same))
    ok = [True]

    def ended(index: int, ending: local.Ending) -> None:
        if index >= len(queue):
            ok[0] &= _planned(ending) and getattr(ending.result, "code", 0) in (0, None)
            return
        chain = queue[index]
        status = local.record_ending(chain[-1], ending)
        for copy, original in same:
            if original in chain and _ended(original):
                link_same(copy, original)
        progress.ended(chain[-1], status, index)

    # The short extra jobs (XOR) last: they fill the tail, where one run is left and a core idles.
    jobs_ = [chain_job(chain, threads) for chain in queue]
    wanted = [1] * len(queue) + [0] * len(extra)
    local.run_jobs([*jobs_, *extra], n_jobs, threads, pool=pool, wanted=wanted, ended=ended)
    return ok[0] and all(_ended(d) for d in directories.find_runs(out))


def _ended(run_dir: Path) -> bool:
    record = runs.earlier_record(run_dir)
    return bool(record) and runs.status(record).ended


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, its studies and folder checked."""
    parser = argparse.ArgumentParser(
        prog="python -m mlp_lab.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="settings for every run, key=value")
    parser.add_argument("--studies", help="comma-separated, of conf/experiment/ (default: all)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated (default 0,1,2,3,4)")
    parser.add_argument("--out", type=Path, default=Path("outputs/lab"), help="the lab's folder")
    parser.add_argument("--resume", action="store_true", help="finish the lab in --out")
    parser.add_argument("--jobs", type=int, help="runs at once (default: the cores)")
    parser.add_argument("--xor-seeds", type=int, default=20, help="the XOR question's seeds")
    parser.add_argument(
        "--precision",
        choices=("auto", "32", "bf16"),
        default="auto",
        help="auto (default): bf16-mixed on a GPU or a CPU with bf16 instructions, else float32",
    )
    args = parser.parse_args(argv)
    known = lab_studies()
    args.studies = args.studies.split(",") if args.studies else known
    unknown = sorted(set(args.studies) - {*known, *NOT_IN_THE_LAB})
    if unknown:
        parser.exit(2, f"error: --studies {','.join(unknown)}: use some of {','.join(known)}\n")
    if args.out.exists() and not args.resume:
        parser.exit(
            2, f"error: {args.out} holds a lab: --resume finishes it, or give a new --out\n"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = [s for s in args.seeds.split(",") if s]
    if len(seeds) < 5:
        print(
            f"note: {len(seeds)} seed(s) give fragile words (the report marks them borderline); "
            "5 or more give firmer ones"
        )
    new = [study for study in args.studies if not (args.out / study).is_dir()]
    precision = lab_precision(args.precision)
    print(f"precision: {precision} ({args.precision})")
    refused = plan(new, args.seeds, args.out, [f"trainer.precision={precision}", *args.overrides])
    if refused:
        if not args.resume:  # a new lab's folder, nothing trained in it: as it was found
            shutil.rmtree(args.out, ignore_errors=True)
            directories.remove_empty(args.out.parent)
        print(f"error: {', '.join(refused)}: settings refused (see above)", file=sys.stderr)
        return 1
    if not (args.out / LAB_RECORD).is_file():  # measured once, apart, before any run starts
        dtypes = ["float32", *(["bfloat16"] if precision.startswith("bf16") else [])]
        peaks = local.run_jobs([partial(matmul_peak, t) for t in dtypes], 1, os.cpu_count() or 1)
        record = {f"{t}_matmul_gflops": p.result for t, p in zip(dtypes, peaks, strict=True)}
        record = {"machine": cluster.machine(), "precision": precision, **record}
        (args.out / LAB_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    xor = args.out / XOR / "xor.json"
    extra = [] if xor.is_file() else [_xor(xor, args.xor_seeds)]
    # Imported once here, so that each forked run starts with torch and Lightning loaded.
    importlib.import_module("mlp_lab.fit")
    ok = train_queue(args.out, args.jobs, extra)
    folders = [p for p in sorted(args.out.iterdir()) if p.is_dir() and p.name != "tensorboard"]
    report = write_report(folders, args.out)
    print(
        f"the report: {report.with_suffix('.html')}; its runs in TensorBoard: "
        f"tensorboard --logdir {args.out / 'tensorboard'}"
    )
    if not ok:
        resume = f"python -m mlp_lab.lab --resume --out {args.out}"
        print(f"error: not every run finished: {resume}", file=sys.stderr)
    return 0 if ok else 1


def matmul_peak(dtype: str = "float32") -> float:
    """This machine's matmul rate in `dtype` on all its cores, GFLOP/s, at the MLP's first layer's
    shapes (batch 1024) and a 2048 square: the best of 10 of each."""
    import torch

    best = 0.0
    for m, k, n in ((1024, 784, 256), (2048, 2048, 2048)):
        a, b = (torch.randn(*shape).to(getattr(torch, dtype)) for shape in ((m, k), (k, n)))
        torch.mm(a, b)
        for _ in range(10):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return round(best, 1)


def lab_precision(asked: str) -> str:
    """bf16-mixed where the machine multiplies bf16 natively (docs/performance.md weighs it), else
    float32; or as asked."""
    if asked == "auto":
        asked = "bf16" if cluster.cpu_bf16() or cluster.cuda_gpus() else "32"
    return "bf16-mixed" if asked == "bf16" else "32-true"


def _xor(record: Path, seeds: int) -> Callable[[], None]:
    """The XOR question's seeds, its record at `record`."""
    job = command("mlp_lab.xor", "xor.seed=0", f"xor.seeds={seeds}", f"xor.record={record}")
    return quiet(job, record.with_name("console.log"))


if __name__ == "__main__":
    sys.exit(main())
