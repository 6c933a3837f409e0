# Everything a fresh machine needs: `make test` and `make demo` create .venv and install first.
# Every install passes -c constraints.txt, which keeps pip on the local CPU build of torch.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: install test demo lint clean gpu-check

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The browser test drives Debian's chromium through Playwright (which cannot download its own here).
CHROMIUM = /usr/bin/chromium
$(CHROMIUM):
	command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || echo "chromium not installed: the browser test will skip"

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -n 3 --dist loadfile

demo: $(STAMP)
	$(PY) scripts/train.py --config configs/demo.yaml

# Every CUDA path on this machine's GPU, about 8 minutes on one H100 (scripts/gpu_check.py): logs and
# JSON figures in $$OUT or gpu-check/<time>; exit status 3 at once without CUDA. PYTHON_GPU: a Python
# whose torch has CUDA (default: .venv's if there, else $(PYTHON)).
PYTHON_GPU ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(PYTHON_GPU) scripts/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
