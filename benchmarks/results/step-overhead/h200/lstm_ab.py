"""A/B prepared for the next GPU session: the LSTM predictor as vivi unrolls it (the faster on CPU,
`vivi.models.predictors.lstm_unrolled`: ~110 ops forward and ~150 backward at 4 shots) against
cuDNN's fused `nn.LSTM` (a few kernels). On one H200 the 256-frame step issued 752 ops against
the bare backbone's 131 and looked launch-bound, so the fused kernel may pay there.

    python benchmarks/results/step-overhead/h200/lstm_ab.py unrolled|native STEP_OVERHEAD_ARGS...
"""

import runpy
import sys
from pathlib import Path

import vivi.models.predictors as predictors

mode = sys.argv.pop(1)
if mode == "native":
    predictors.lstm_unrolled = lambda lstm, x: lstm(x)[0]
elif mode != "unrolled":
    sys.exit("first argument: unrolled or native")
print(f"LSTM predictor: {mode}")
runpy.run_path(str(Path(__file__).resolve().parents[3] / "step_overhead.py"), run_name="__main__")
