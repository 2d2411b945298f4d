#!/bin/bash
# Session 15, second call: the step with cuDNN's LSTM on CUDA (run_lstm, after round4), A/B'd in the
# same run against the unrolled one; native under compile; and 2 loader workers instead of 8 at 256
# frames, where full - fixed was ~7 ms in round4 (a launch-bound main thread beside busy workers?).
# Its v8, v8_workers2, v16 and v16_workers4 runs had run_lstm choosing cuDNN on CUDA (since reverted,
# see ../README.md, session 15); lstm_ab.py then patched run_lstm, as it now patches lstm_unrolled.
#   run(command="bash benchmarks/results/step-overhead/h200/round5.sh", carry=[".bench"], timeout_s=480)
set -u
export PYTHONPATH=$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
L="python3 benchmarks/results/step-overhead/h200/lstm_ab.py"
A="--data .bench/D256 --scale paper --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1"
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t "$@" 2>&1 | tee $OUT/$name.log; echo "== $name took ${SECONDS}s" | tee -a $OUT/took.log; }
python3 -c "import torch, timm; print(torch.__version__, timm.__version__)"
run v8 75 $B --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
run v8_unrolled 75 $L unrolled $A
run v8_workers2 75 $B --set data.videos=8 --set data.workers=2 --steps 10 --rounds 3 --warm-passes 1
run v16 120 $B --set data.videos=16 --set log_every=5 --steps 10 --rounds 3 --loop-steps 40
run v8_compile_native 150 $L native --data .bench/D256 --scale paper --set data.videos=8 --set compile=true --steps 10 --rounds 2 --warm-passes 1
