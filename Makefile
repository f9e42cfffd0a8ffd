# geotranslate — the two commands a new user needs: `make demo` and `make test`.
SHELL  := /bin/bash
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
	set -o pipefail; $(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
		| { grep -v "is ignored: it is neither" || true; }
	$(PY) -c "import geotranslate, torch, torchvision, rasterio, geopandas, pyogrio, skimage, \
		safetensors, click, tqdm, segmentation_models_pytorch"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The whole pipeline on sample_data/: SAR -> optical with Pix2Pix, a few minutes on 2 CPU cores.
GT := $(VENV)/bin/geotranslate
demo: $(STAMP)
	rm -rf $(DEMO)
	@echo "== 1/5 export paired 64-px chips: SAR (A) -> optical (B), 15 % held out"
	$(GT) export-tiles sample_data/sar.tif --b sample_data/optical.tif \
		--out $(DEMO)/chips --tile-size 64 --val-fraction 0.15
	@echo "== 2/5 train Pix2Pix briefly with a small U-Net"
	$(GT) train $(DEMO)/chips --dataset-type Pix2Pix --out $(DEMO)/run \
		--ngf 32 --ndf 32 --batch-size 4 --epochs 30 --epochs-decay 20 --precision bf16
	@echo "== 3/5 translate the whole SAR raster"
	$(GT) predict-raster sample_data/sar.tif --model $(DEMO)/run \
		--out $(DEMO)/sar_translated.tif --precision bf16
	@echo "== 4/5 side-by-side picture"
	$(GT) preview sample_data/sar.tif $(DEMO)/sar_translated.tif sample_data/optical.tif \
		--title "SAR input (VV)" --title "translation" --title "optical reference" \
		--out $(DEMO)/demo.png
	@echo "== 5/5 measure the translation against the optical reference"
	$(GT) evaluate $(DEMO)/sar_translated.tif sample_data/optical.tif --json $(DEMO)/evaluation.json
	@echo "Done: $(DEMO)/sar_translated.tif, $(DEMO)/demo.png, $(DEMO)/evaluation.json"

sample-data: $(STAMP)
	$(PY) tools/make_sample_data.py --out sample_data

bench: $(STAMP)
	$(PY) tools/bench_export.py
	$(PY) tools/bench_train.py
	$(PY) tools/bench_predict.py

clean:
	rm -rf $(DEMO) .pytest_cache
