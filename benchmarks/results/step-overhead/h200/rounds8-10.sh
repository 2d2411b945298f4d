#!/bin/bash
# Session 16, the three device calls after round7.sh (logs round8_*, round9_*, round10_*), each one
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
"${1:-round8}"
