#!/bin/bash
set -u
export PYTHONPATH=$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t "$@" 2>&1 | tee $OUT/$name.log; echo "== $name took ${SECONDS}s"; }
run check 60 python3 .bench/check_prefetch.py
run v8 90 $B --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
run v8_phases 75 $B --set data.videos=8 --steps 10 --rounds 2 --phases
run profile 90 python3 benchmarks/step_profile.py --data .bench/D256 --scale paper --set data.videos=8 --steps 5 --rows 40
run v16_loop 120 $B --set data.videos=16 --set log_every=5 --steps 10 --rounds 3 --loop-steps 40
run v8_compile 150 $B --set data.videos=8 --set compile=true --steps 10 --rounds 2
