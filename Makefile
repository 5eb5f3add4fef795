# The two commands of the README. Both set up what they need on a fresh machine.
#   make run   - the whole workflow on the embedded default config (phantoms), one machine
#   make test  - the test suite (starts a real single-node SLURM cluster when run as root)
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
CORES ?= all

.PHONY: venv run test test-fast slurm lint docs

venv:
	@bash scripts/setup-venv.sh

run: venv
	snakemake --profile profiles/local --cores $(CORES)

slurm:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/slurm/up.sh; else echo "not root: SLURM tests will be skipped"; fi

test: venv slurm
	python -m pytest -q --durations=15 tests

test-fast: venv
	python -m pytest -q -m "not slow and not slurm" tests

docs: venv
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict

lint: venv
	ruff check craft tests bench scripts && ruff format --check craft tests bench scripts \
	  && snakefmt --check Snakefile rules && snakemake --lint && python scripts/envs.py --check
