# geotranslate — the two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo_output

.PHONY: install test demo lint bench clean sample-data

# Create the virtualenv and install the package with its dev extra; redone only when
# pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import geotranslate, torch, torchvision, rasterio, segmentation_models_pytorch"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The whole pipeline on sample_data/: SAR -> optical with Pix2Pix, a few minutes on 2 CPU cores.
demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/geotranslate export-tiles sample_data/sar.tif --b sample_data/optical.tif \
		--out $(DEMO)/chips --tile-size 64 --val-fraction 0.15

sample-data: $(STAMP)
	$(PY) tools/make_sample_data.py --out sample_data

bench: $(STAMP)
	$(PY) tools/bench_export.py

clean:
	rm -rf $(DEMO) .pytest_cache
