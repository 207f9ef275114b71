R=$(pwd); rm -rf /tmp/proj /tmp/b /tmp/x; export XATTN_VIDEO_GIT_SHA=$1
. benchmarks/gpu_env.sh >/dev/null 2>&1; export XDG_CACHE_HOME=/tmp/xdg
mkdir -p /tmp/x && cp -r tests /tmp/x/ && cp pyproject.toml /tmp/x/ 2>/dev/null
nvidia-smi --query-gpu=name --format=csv,noheader
cd /tmp/x && timeout 530 python3 -P -m pytest -m gpu -v -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning tests/ -s --durations=15 > $OUT/gpu_tests_h200_$1_all.log 2>&1; echo "pytest rc=$?"
grep -E "passed|failed|error" $OUT/gpu_tests_h200_$1_all.log | tail -3
grep -E "FAILED|ERROR" $OUT/gpu_tests_h200_$1_all.log | head -20
