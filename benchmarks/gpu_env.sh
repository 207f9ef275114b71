# Source this on a bare GPU machine (torch + triton installed, no internet) from the repo root:
#   . benchmarks/gpu_env.sh
# Installs the wheels carried in .whl/ (diffusers, lpips, imageio-ffmpeg, setuptools>=77, ...) and
# this project into /tmp, without touching the machine's own packages, and puts both on
# PYTHONPATH. The project is built with the carried setuptools (its SPDX license string needs
# >= 77; --no-build-isolation would otherwise use whatever setuptools the machine has).
# GPU tests against that copy: python3 -P -m pytest --import-mode=append -m gpu tests
# (-P and append mode keep the repo's own xattn_video/, which has no pipelines/ inside, behind
# the installed one on sys.path; without them pytest stops at start-up with a message that says
# so).
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --upgrade --target /tmp/proj .
export PYTHONPATH=/tmp/proj:/tmp/site
export PYTHONUNBUFFERED=1
set +e
python3 -c "import torch, triton, diffusers; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
