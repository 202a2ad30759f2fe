# srnode: two commands set up a fresh machine.
#   make demo   create .venv, install, run the end-to-end demo
#   make test   create .venv, install, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
# Exact pins: pip takes these builds from the machine's disk; an unpinned torch downloads GBs.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint system-deps system-check venv viewer clean bench

# OHIF Viewer (docs/dicomweb.md, "Viewer"): the built app of the npm package @ohif/app, pinned by
# version and registry integrity, served by the node at /ohif. Fetched once, never at run time.
OHIF_VERSION   := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR       := vendor/ohif
OHIF_STAMP     := $(OHIF_DIR)/.installed-$(OHIF_VERSION)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

viewer: $(OHIF_STAMP)

$(OHIF_STAMP):
	deploy/fetch-ohif.sh $(OHIF_VERSION) $(OHIF_INTEGRITY) $(OHIF_DIR)

# Debian packages the integration tests talk to (real DCMTK, Orthanc and its DICOMweb plugin,
# dicom3tools' dciodvfy, Redis, Chromium). `make test` installs the missing ones itself.
SYSTEM_PACKAGES := dcmtk orthanc orthanc-dicomweb dicom3tools redis-server chromium chromium-driver docker-compose

system-deps:
	deploy/system-deps.sh install $(SYSTEM_PACKAGES)

system-check:
	deploy/system-deps.sh ensure $(SYSTEM_PACKAGES)

# Lint and type checks (configuration in pyproject.toml); a finding fails `make test`.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: system-check $(STAMP) $(OHIF_STAMP) lint
	$(PY) -m pytest -q -ra

demo: $(STAMP)
	$(VENV)/bin/srnode demo

clean:
	rm -rf $(VENV) var build vendor *.egg-info
