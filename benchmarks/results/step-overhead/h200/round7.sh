#!/bin/bash
# Session 16, one device call (logs round7_*):
#   run(command="bash benchmarks/results/step-overhead/h200/round7.sh", carry=[".bench"], timeout_s=560)
# with, prepared here: .bench/D256 (`vivi synth W --videos 48 --size 256 && vivi ingest W .bench/D256`),
# .bench/D96 (the same at the default size), and .bench/stubs/av/__init__.py, an empty stand-in for
# PyAV, which that machine lacks: only `vivi synth`/`ingest` decode or encode video, and the
# mini-VTAB suite (drawn with numpy) is rendered there by the first evaluate.
# What it checks that no CPU test can: amp=fp16 (GradScaler + fused SGD) on CUDA, syncs and speed
# beside bf16; VITO at paper scale through the real loop; and a new user's whole path on CUDA at
# tiny scale: pretrain stopped by SIGTERM and resumed, a torchrun launch, evaluate linear + finetune.
set -u
export PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/.bench/stubs PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
V="python3 -m vivi"
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t "$@" > $OUT/$name.log 2>&1; echo "== $name exit $? took ${SECONDS}s" | tee -a $OUT/took.log; grep -v "it/s\|step/s\|img/s" $OUT/$name.log | tail -${TAILN:-6}; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, timm; print(torch.__version__, timm.__version__)"; } 2>&1 | tee $OUT/env.log
run syncs_fp16 60 python3 benchmarks/cuda_syncs.py --data .bench/D256 --set data.videos=8 --set amp=fp16
TAILN=9 run v8_bf16 60 $B --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1
TAILN=9 run v8_fp16 60 $B --set data.videos=8 --set amp=fp16 --steps 10 --rounds 3 --warm-passes 1
TAILN=9 run v16_fp16 80 $B --set data.videos=16 --set amp=fp16 --steps 10 --rounds 3 --warm-passes 1
# VITO, 512 frames (256 pairs) per GPU, the real loop: its own frames/s over 60 steps
run vito 120 $V pretrain --preset VITO --scale paper --data .bench/D256 --out /tmp/vito --steps 60 --set data.videos=256 --set log_every=10 --set ckpt_every=1000
grep frames_per_s /tmp/vito/metrics.jsonl | tee $OUT/vito_metrics.log
# a new user's path on CUDA, tiny scale
R=/tmp/e2e; S="--preset VIVI-Ex(4) --data .bench/D96 --out $R/run --set device=cuda --set optim.steps=300 --set ckpt_every=50 --set log_every=25"
echo "== pretrain, stopped by SIGTERM once 2 checkpoints exist"; SECONDS=0
$V pretrain $S > $OUT/e2e_first.log 2>&1 & pid=$!
for i in $(seq 1 240); do sleep 0.5; [ $(ls $R/run/checkpoints 2>/dev/null | wc -l) -ge 2 ] && break; done
kill -TERM $pid; wait $pid; echo "first exit $? after ${SECONDS}s; checkpoints: $(ls $R/run/checkpoints | tr '\n' ' ')" | tee -a $OUT/took.log
tail -c 400 $OUT/e2e_first.log; echo
run e2e_resume 120 $V pretrain $S
grep -c . $R/run/metrics.jsonl; tail -2 $R/run/metrics.jsonl
TAILN=8 run e2e_linear 150 $V evaluate $R/run --task mini-vtab --protocol linear --device cuda --cache /tmp/cache --out $R/linear.json
TAILN=8 run e2e_finetune 90 $V evaluate $R/run --task mini-vtab:object,count --protocol finetune --scale tiny --device cuda --cache /tmp/cache --out $R/ft.json
run e2e_torchrun 120 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m vivi pretrain --preset 'VIVI-Ex(4)' --data .bench/D96 --out $R/tr --set device=cuda --steps 40 --set log_every=10
tail -1 $R/tr/metrics.jsonl
