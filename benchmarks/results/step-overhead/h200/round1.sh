#!/bin/bash
# One device call: the GPU row of issue 6 (ResNet-50 v2, 224 px, bf16, channels_last), VIVI-Ex(4) vs bare.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
{ date; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc
  python3 -c "import torch,timm;print('torch',torch.__version__,'timm',timm.__version__,torch.cuda.get_device_name())"; } 2>&1 | tee $OUT/env.log
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t $B "$@" 2>&1 | tee $OUT/$name.log; echo "== $name took ${SECONDS}s"; }
run v8 90 --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
run v8_cudnn 90 --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1 --cudnn-benchmark
run v8_phases 75 --set data.videos=8 --steps 10 --rounds 2 --phases
run v16_loop 150 --set data.videos=16 --set log_every=5 --steps 10 --rounds 3 --loop-steps 40
