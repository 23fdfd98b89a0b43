# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The dev/CI venv pins a torch that works beside torchvision (segment_anything needs it). It takes about 7 GB
# (the registry's torch is the CUDA build); --no-cache-dir keeps pip from holding a second copy of each download.
# Users inside ComfyUI keep ComfyUI's own torch: pyproject.toml does not pin it.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench docs clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir $(TORCH_PIN)
	$(PY) -m pip install -q --no-cache-dir -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/backdrop run assets/example_product.jpg --style "Soft Spring" --out demo-out --save-mask

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_masking.py
	$(PY) benchmarks/bench_sam.py
	$(PY) benchmarks/bench_inpaint.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_watermark.py --quick
	$(PY) benchmarks/bench_export.py

# Regenerate what is generated from the code: the reference in docs/*.md and workflows/ (tests check both).
docs: $(VENV)/.installed
	$(PY) docs/make_reference.py
	$(PY) docs/make_workflows.py

clean-venv:
	rm -rf $(VENV)
