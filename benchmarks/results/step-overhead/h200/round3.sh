#!/bin/bash
set -u
export PYTHONPATH=$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t "$@" 2>&1 | tee $OUT/$name.log; echo "== $name took ${SECONDS}s"; }
run sync 60 python3 .bench/sync_check.py
run v8 75 $B --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
run v16 120 $B --set data.videos=16 --set log_every=5 --steps 10 --rounds 3 --loop-steps 40
