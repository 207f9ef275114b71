R=$(pwd); rm -rf /tmp/proj /tmp/b /tmp/x; export XATTN_VIDEO_GIT_SHA=$1
. benchmarks/gpu_env.sh >/dev/null 2>&1; export XDG_CACHE_HOME=/tmp/xdg
mkdir -p /tmp/x && cp -r tests /tmp/x/ && cp pyproject.toml /tmp/x/; cp -r benchmarks /tmp/b
P="python3 -P -m pytest -m gpu -v -p no:cacheprovider -s"
cd /tmp/x && timeout 100 $P tests/test_gpu_gluon.py -k "4-False-119056 or True or short_and_odd" > $OUT/gpu_tests_h200_$1_part2.log 2>&1; echo "rc=$?"
cd /tmp/x && timeout 230 $P tests/ -k "not test_gpu_estimate_gluon and not test_gpu_compile and not test_gpu_fused and not test_fp8_op and not test_gpu_gluon" >> $OUT/gpu_tests_h200_$1_part2.log 2>&1; echo "rc=$?"
grep -E "passed|failed" $OUT/gpu_tests_h200_$1_part2.log | tail -3; grep -E "FAILED|ERROR" $OUT/gpu_tests_h200_$1_part2.log | head
cd /tmp/b && timeout 240 python3 -P bench_attention.py --no-flex --out $OUT/bench_attention_h200_$1.json > $OUT/bench_attention_h200_$1.log 2>&1; echo "bench rc=$?"; tail -45 $OUT/bench_attention_h200_$1.log
