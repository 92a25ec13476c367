# The two commands the README names first:
#   make report   build the whole report (report/report.pdf and report/report.html)
#   make test     run the test suite (unit tests + every notebook on the quick profile)
# Both create .venv and install everything on first use. Also: make bench; make gpu-check [FULL=1] (on a GPU).
#
# Variables: PROFILE=full|quick  DATA=<CIFAR-10 root>  MNIST=<MNIST root>  DEVICE=auto|cpu|cuda
#            (DATA/MNIST optional: default $CIFARLIB_DATA/$CIFARLIB_MNIST_DATA, else downloaded once into ~/.cache/cifarlib)
#            EXECUTOR=local|serial|dask:ADDRESS|submitit:FOLDER (where training runs go; default local)
#            REPORT_ARGS="--param 04_transfer:pretrained=false ..." (more `python -m cifarlib report` options)
#            PYTHON=python3  TORCH="<pip requirement(s) for torch and torchvision>"  PYTEST_ARGS=...

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= full
DEVICE ?= auto
EXECUTOR ?=
DATA ?=
MNIST ?=
REPORT_ARGS ?=
# The versions the committed results were made with; override for another build (e.g. CPU-only wheels).
TORCH ?= torch==2.14.1 torchvision==0.29.1
PIP_FLAGS ?= -q
STAMP := $(VENV)/.installed-stamp

.PHONY: report test install bench gpu-check clean-build help

help:
	@sed -n '1,10p' Makefile

report: $(STAMP)
	$(PY) -m cifarlib report --profile $(PROFILE) --device $(DEVICE) \
	  $(if $(DATA),--data-root "$(DATA)") $(if $(MNIST),--mnist-root "$(MNIST)") \
	  $(if $(EXECUTOR),--executor "$(EXECUTOR)") $(REPORT_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m cifarlib bench $(if $(DATA),--data-root "$(DATA)")

# The CUDA path, run and timed: bench, one epoch of Model B, the quick report (FULL=1: the full report too).
gpu-check: $(STAMP)
	$(PY) -m cifarlib gpu-check $(if $(DATA),--data-root "$(DATA)") $(if $(MNIST),--mnist-root "$(MNIST)") \
	  $(if $(filter 1 yes true,$(FULL)),--full)

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) $(TORCH)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cifarlib)" >/dev/null
	@touch $(STAMP)

clean-build:
	rm -rf report/build report/report.pdf report/report.html figures/*.png figures/*.pdf
