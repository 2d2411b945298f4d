#!/bin/bash
# Prepared in session 14 (no GPU lent); ran in session 15 as round 4 (logs round4_*). One device call,
#   run(command="bash benchmarks/results/step-overhead/h200/round4.sh", carry=[".bench"], timeout_s=540)
# after `vivi synth /tmp/W256 --videos 48 --size 256 && vivi ingest /tmp/W256 .bench/D256` here.
# Re-times the step after session 13's last fixes (InfoNCE's scatter_, the loader-alone figure),
# lists what still syncs, A/Bs cuDNN's LSTM against the unrolled one, and times compile=true.
set -u
export PYTHONPATH=$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t "$@" 2>&1 | tee $OUT/$name.log; echo "== $name took ${SECONDS}s" | tee -a $OUT/took.log; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/env.log
python3 -c "import torch, timm; print(torch.__version__, timm.__version__)" | tee -a $OUT/env.log
run syncs 60 python3 benchmarks/cuda_syncs.py --data .bench/D256 --set data.videos=8
run v8 75 $B --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
run v16 120 $B --set data.videos=16 --set log_every=5 --steps 10 --rounds 3 --loop-steps 40
L="python3 benchmarks/results/step-overhead/h200/lstm_ab.py"
run v8_lstm_native 70 $L native --data .bench/D256 --scale paper --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
run v8_compile 170 $B --set data.videos=8 --set compile=true --steps 10 --rounds 2 --warm-passes 1
