# `make demo` and `make test` set everything up on a fresh machine: a .venv that reuses any torch
# already installed (e.g. a CUDA build on a GPU machine), torch==2.13.0 only when none is
# importable, the build/test tools only when missing, then an editable build of kexue.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
NVCC   ?= nvcc
# module:package pairs installed only when the module cannot be imported
DEPS   := scikit_build_core:scikit-build-core pybind11:pybind11 ninja:ninja pytest:pytest \
          hypothesis:hypothesis numpy:numpy scipy:scipy sklearn:scikit-learn matplotlib:matplotlib tqdm:tqdm

.PHONY: demo test test-cuda bench wheel build deps cuda-check sass-report gpu-check gpu-check-dry clean

# The demo's poetry and sentence-matching sections read the small corpora beside the repository
# when they are there (../shared/data); without them those sections say they are skipped.
SHARED_DATA ?= $(abspath ../shared/data)

demo: build
	KEXUE_POEMS=$${KEXUE_POEMS:-$(wildcard $(SHARED_DATA)/poems/quatrains5.txt)} \
	KEXUE_STSB=$${KEXUE_STSB:-$(wildcard $(SHARED_DATA)/stsb)} \
	$(PY) -m kexue.cli demo

test: build
	$(PY) -m pytest -q

test-cuda: build
	$(PY) -m pytest -q -m cuda

bench: build
	$(PY) -m kexue.cli bench --json bench/out/latest.json

wheel: deps
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

build: deps
	$(PIP) install -q --no-build-isolation --no-deps -e .

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

deps: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@missing=$$($(PY) -c "import importlib.util as u, sys; print(' '.join(p for m, p in (a.split(':') for a in sys.argv[1:]) if u.find_spec(m) is None))" $(DEPS)); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; $(PIP) install -q $$missing; fi

# Every CUDA source compiles for sm_80 and sm_90 with plain nvcc (they include no torch headers),
# and the glue's CUDA-only branches compile against torch's headers with KEXUE_WITH_CUDA set.
CUDA_INC ?= $(firstword $(wildcard /usr/local/cuda/include /usr/local/cuda-*/include))
cuda-check: deps
	@command -v $(NVCC) >/dev/null || { echo "cuda-check: $(NVCC) not found"; exit 1; }
	@set -e; for f in csrc/cuda/*.cu; do \
	  echo "nvcc sm_80,sm_90: $$f"; \
	  $(NVCC) -std=c++17 -Icsrc --threads 2 -Werror all-warnings \
	    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	    -c $$f -o /dev/null; \
	done
	@test -n "$(CUDA_INC)" || { echo "cuda-check: CUDA headers not found; set CUDA_INC"; exit 1; }
	@set -e; ti=$$($(PY) -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))"); \
	for f in csrc/ops/*.cpp; do \
	  echo "g++ glue with KEXUE_WITH_CUDA: $$f"; \
	  $(CXX) -std=c++17 -fsyntax-only -Werror -DKEXUE_WITH_CUDA=1 -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
	    -Icsrc -isystem $$ti -isystem $$ti/torch/csrc/api/include -isystem $(CUDA_INC) $$f; \
	done

# A static report per kernel for sm_90 without a GPU (registers, spills, shared memory, occupancy,
# HMMA/LDSM/LDGSTS per main-loop iteration, local memory) from ptxas -v and cuobjdump, checked
# against the committed baseline so the instruction mix cannot regress silently. Needs nvcc; the
# cuobjdump/nvdisasm pip packages are installed only when missing (no deps: never torch). A
# deliberate change: $(PY) tools/sass_report.py --update-baseline $(SASS_BASELINE), then commit it.
SASS_PKGS     := nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
SASS_OUT      ?= bench/out/sass
SASS_BASELINE ?= bench/sass_baseline.json
sass-report: $(PY)
	@command -v $(NVCC) >/dev/null || { echo "sass-report: $(NVCC) not found"; exit 1; }
	@missing=$$($(PY) -c "import importlib.metadata as m, re, sys; have = {re.sub('[-_.]+', '-', d.metadata['Name'] or '').lower() for d in m.distributions()}; print(' '.join(p for p in sys.argv[1:] if p not in have))" $(SASS_PKGS)); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; $(PIP) install -q $$missing; fi
	NVCC=$(NVCC) $(PY) tools/sass_report.py --out $(SASS_OUT) --check $(SASS_BASELINE)

# On the lent GPU machine, within ~10 minutes: sm_90 build, CUDA tests, compute-sanitizer, benchmarks,
# one report in $(OUT). No deps/build prerequisites: that machine has no .venv, its python3 has torch.
# Extra options through GPU_CHECK_ARGS, e.g. GPU_CHECK_ARGS="--only sanitizer,bench" for a rerun.
PYTHON_FOR_GPU ?= python3
OUT            ?= gpu-check-out
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON_FOR_GPU) tools/gpu_check.py --out $(OUT) $(GPU_CHECK_ARGS)

# CI without a GPU: the same stages, the GPU ones reported as skipped, and the report written.
gpu-check-dry:
	$(PY) tools/gpu_check.py --dry-run --out $(OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist .pytest_cache
