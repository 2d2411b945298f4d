"""On CUDA: DevicePrefetcher's batches equal the loader's, copied plainly; and a pinned loader pins."""
import torch
from vivi.config import apply_overrides, preset
from vivi.data.batches import make_loader, training_videos
from vivi.data.shards import read_index
from vivi.train.prefetch import DevicePrefetcher
cfg = apply_overrides(preset("VIVI-Ex(4)", "paper"), ["data.videos=4"])
table = training_videos(read_index([".bench/D256"]), cfg.data, ".bench/D256")
dev = torch.device("cuda")
ref = make_loader(table, cfg.data, seed=5, start=0, steps=6)
pre = DevicePrefetcher(make_loader(table, cfg.data, seed=5, start=0, steps=6, pin=True), dev)
n = 0
for want in ref:
    got = next(pre)
    torch.cuda._sleep(10_000_000)  # a busy default stream while the next copy runs on the side stream
    pre.prefetch()
    assert got.device.type == "cuda" and torch.equal(got.cpu(), want), n
    n += 1
try:
    next(pre); raise SystemExit("no StopIteration")
except StopIteration:
    pass
print(f"prefetch check: {n} batches equal, end raised; pinned: {next(make_loader(table, cfg.data, seed=5, pin=True)).is_pinned()}")
