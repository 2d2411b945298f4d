#!/bin/bash
# Session 16, the five device calls after round7.sh (logs round8_* .. round12_*), each one
# run(command=..., carry=[".bench"]) with the .bench of round7.sh. Written here as they ran.
export PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/.bench/stubs PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
B="python3 benchmarks/step_overhead.py --data .bench/D256 --scale paper"
run() { name=$1; t=$2; shift 2; echo "== $name: $*"; SECONDS=0; timeout $t "$@" > $OUT/$name.log 2>&1; echo "== $name exit $? took ${SECONDS}s"; grep -v "it/s\|step/s" $OUT/$name.log | tail -8; }
round8() {  # bf16 against fp16 at 512 frames with the real loop, cudnn.benchmark at 256, VITO in fp16
  run v16_bf16_loop 90 $B --set data.videos=16 --set log_every=5 --steps 10 --rounds 3 --warm-passes 1 --loop-steps 40
  run v16_fp16_loop 90 $B --set data.videos=16 --set amp=fp16 --set log_every=5 --steps 10 --rounds 3 --warm-passes 1 --loop-steps 40
  run v8_bf16_cudnnb 60 $B --set data.videos=8 --steps 10 --rounds 3 --warm-passes 1 --cudnn-benchmark
  run v8_fp16_cudnnb 60 $B --set data.videos=8 --set amp=fp16 --steps 10 --rounds 3 --warm-passes 1 --cudnn-benchmark
  run vito_fp16 90 python3 -m vivi pretrain --preset VITO --scale paper --data .bench/D256 --out /tmp/vito16 --steps 60 \
      --set data.videos=256 --set amp=fp16 --set log_every=10 --set ckpt_every=1000
}
round9() {  # after the fix of vivi/train/optimizer.py (zero momentum buffers): both presets, fp16, 60 steps
  for p in VITO 'VIVI-Ex(4)'; do v=256; [ "$p" = VITO ] || v=16; SECONDS=0
    timeout 150 python3 -m vivi pretrain --preset "$p" --scale paper --data .bench/D256 --out /tmp/r_$v --steps 60 \
        --set data.videos=$v --set amp=fp16 --set log_every=10 --set ckpt_every=1000 > $OUT/fp16_$v.log 2>&1
    echo "== $p fp16 exit $? took ${SECONDS}s"; cat /tmp/r_$v/metrics.jsonl | tee $OUT/fp16_${v}_metrics.log; done
}
round10() {  # is bf16's deficit a layout matter? both precisions without channels_last
  for a in bf16 fp16; do timeout 70 $B --set data.videos=8 --set amp=$a --set channels_last=false --steps 10 --rounds 2 \
      --warm-passes 1 > $OUT/v8_${a}_nchw.log 2>&1; done
}
# The CPU target on that machine's CPU (an Intel Xeon, 16 cores): 4 cores (taskset), the tiny step, the GPU hidden
C="taskset -c 0-3 python3 benchmarks/step_overhead.py --data .bench/D96 --set device=cpu --warm-passes 5 --rounds 3 --steps 10"
round11() {  # torch on 2 threads, 2 cores to spare: the augmentation in the process, then in 2 loader workers
  export CUDA_VISIBLE_DEVICES=
  OMP_NUM_THREADS=2 timeout 80 $C > $OUT/cpu4_device.log 2>&1
  OMP_NUM_THREADS=2 timeout 80 $C --set augment.where=loader --set data.workers=2 > $OUT/cpu4_loader.log 2>&1
}
round12() {  # torch on all 4 threads: the augmentation in the process, then in 1 loader worker
  export CUDA_VISIBLE_DEVICES=
  timeout 60 $C > $OUT/cpu4_t4_device.log 2>&1
  timeout 60 $C --set augment.where=loader --set data.workers=1 > $OUT/cpu4_t4_loader1.log 2>&1
}
"${1:-round8}"
