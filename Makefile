# The two commands of the README. Each installs what it needs into .venv first.
.PHONY: demo test lint bench

demo:
	scripts/bootstrap.sh
	.venv/bin/compo demo

test:
	scripts/bootstrap.sh all
	.venv/bin/python -m pytest -q

lint:
	scripts/bootstrap.sh all
	.venv/bin/ruff check .

bench:
	scripts/bootstrap.sh
	.venv/bin/python bench/perturbation_throughput.py
