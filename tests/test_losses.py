"""Losses against slow references written independently of the implementation."""

import math

import pytest
import torch

from vivi.losses import info_nce, other_video_candidates, semi_hard_triplet_loss
from vivi.losses.infonce import InfoNCELoss
from vivi.losses.triplet import pairwise_distances, semi_hard_negatives


def reference_semi_hard(emb, labels, margin, squared):
    """Triple loop, the FaceNet/TF definition spelled out."""
    n = len(labels)
    def d(i, j):
        s = sum((float(emb[i, k]) - float(emb[j, k])) ** 2 for k in range(emb.shape[1]))
        return s if squared else math.sqrt(s)
    total, count = 0.0, 0
    for a in range(n):
        for p in range(n):
            if a == p or labels[a] != labels[p]:
                continue
            d_ap = d(a, p)
            negs = [d(a, k) for k in range(n) if labels[k] != labels[a]]
            if not negs:
                continue
            farther = [x for x in negs if x > d_ap]
            neg = min(farther) if farther else max(negs)
            total += max(margin + d_ap - neg, 0.0)
            count += 1
    return total / count


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_hard_matches_reference(seed, squared):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(18, 5, generator=g), dim=1)
    labels = torch.randint(0, 5, (18,), generator=g)
    got = semi_hard_triplet_loss(emb, labels, margin=0.5, squared=squared)
    assert got.item() == pytest.approx(reference_semi_hard(emb, labels.tolist(), 0.5, squared), rel=1e-5, abs=1e-6)


def test_semi_hard_hand_worked_case():
    # 1-D points: class 0 at 0 and 1, class 1 at 1.5 and 4. Squared distances.
    emb = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # (0,1): d_ap=1, negs {2.25, 16} -> semi-hard 2.25 -> relu(0.5+1-2.25)=0
    # (1,0): d_ap=1, negs {0.25, 9} -> 9 -> 0
    # (2,3): d_ap=6.25, negs {2.25, 0.25} -> none farther -> max 2.25 -> 0.5+6.25-2.25=4.5
    # (3,2): d_ap=6.25, negs {16, 9} -> 9 -> relu(0.5+6.25-9)=0
    got = semi_hard_triplet_loss(emb, labels, margin=0.5, squared=True)
    assert got.item() == pytest.approx(4.5 / 4)


def test_semi_hard_gradient_flows_and_is_finite():
    emb = torch.randn(32, 8, requires_grad=True)
    loss = semi_hard_triplet_loss(torch.nn.functional.normalize(emb, dim=1), torch.arange(32) // 8)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_positive_pairs_and_exemplar_targets_match_a_loop():
    """The pairs the objective makes once per batch shape (on the CPU) are every ordered pair of distinct
    frames of one shot, in the order the loss found them itself; passing them changes nothing."""
    from vivi.train.objective import exemplar_targets

    v, k, f = 2, 3, 4
    labels, (anchor, positive) = exemplar_targets(v, k, f, torch.device("cpu"))
    shot = [i // f for i in range(v * k * f)]  # frames of one shot are consecutive
    want = [(a, p) for a in range(len(shot)) for p in range(len(shot)) if a != p and shot[a] == shot[p]]
    assert labels.tolist() == shot
    assert list(zip(anchor.tolist(), positive.tolist())) == want
    emb = torch.nn.functional.normalize(torch.randn(v * k * f, 6, generator=torch.Generator().manual_seed(4)), dim=1)
    with_pairs = semi_hard_triplet_loss(emb, labels, pairs=(anchor, positive))
    assert torch.equal(with_pairs, semi_hard_triplet_loss(emb, labels))


def test_semi_hard_no_positive_pairs_is_zero():
    assert semi_hard_triplet_loss(torch.randn(4, 3), torch.arange(4)).item() == 0.0


def test_semi_hard_gradient_matches_reference():
    """Gradients of the loop reference (autograd through one scalar expression per triplet)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=g)
    labels = (torch.arange(16) // 4).tolist()
    ref_x = x.clone().requires_grad_()
    emb = torch.nn.functional.normalize(ref_x, dim=1)
    terms = []
    for a in range(16):
        for p in range(16):
            if a == p or labels[a] != labels[p]:
                continue
            d_ap = (emb[a] - emb[p]).pow(2).sum()
            negs = [(emb[a] - emb[k]).pow(2).sum() for k in range(16) if labels[k] != labels[a]]
            farther = [d for d in negs if d.item() > d_ap.item()]
            neg = min(farther, key=lambda d: d.item()) if farther else max(negs, key=lambda d: d.item())
            terms.append((0.5 + d_ap - neg).clamp_min(0.0))
    torch.stack(terms).mean().backward()
    got_x = x.clone().requires_grad_()
    semi_hard_triplet_loss(torch.nn.functional.normalize(got_x, dim=1), torch.tensor(labels)).backward()
    torch.testing.assert_close(got_x.grad, ref_x.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("squared", [True, False])
def test_pairwise_distances_gradient_against_finite_differences(squared):
    """The hand-written symmetric backward against numerical derivatives (double precision); off the
    diagonal, where the unsquared distance is differentiable (its diagonal is 0 whatever x is)."""
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    off = ~torch.eye(7, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda t: pairwise_distances(t, squared=squared)[off], (x,))


def test_pairwise_distances_match_the_plain_formula_with_duplicate_rows():
    """Values and gradients equal autograd through the textbook expression, also at a duplicate
    pair, whose squared distance round-off makes negative before the clamp."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 9, generator=g)
    base[4] = base[1]
    weights = torch.randn(6, 6, generator=g)
    x_ref, x_got = base.clone().requires_grad_(), base.clone().requires_grad_()
    sq = x_ref.pow(2).sum(1)
    ref = (sq[:, None] + sq[None, :] - 2.0 * x_ref @ x_ref.t()).clamp_min(0.0)
    got = pairwise_distances(x_got)
    assert got[1, 4] == 0 and got[4, 1] == 0
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    (ref * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(x_got.grad, x_ref.grad, atol=1e-4, rtol=1e-5)


def test_semi_hard_negatives_chunks_agree():
    """Mining in chunks of one pair picks the same negatives as one chunk of all pairs."""
    g = torch.Generator().manual_seed(4)
    emb = torch.nn.functional.normalize(torch.randn(40, 6, generator=g), dim=1)
    labels = torch.randint(0, 6, (40,), generator=g)
    dist = pairwise_distances(emb)
    same = labels[:, None] == labels[None, :]
    anchor, positive = (same & ~torch.eye(40, dtype=torch.bool)).nonzero(as_tuple=True)
    whole = semi_hard_negatives(dist, ~same, anchor, positive)
    assert torch.equal(semi_hard_negatives(dist, ~same, anchor, positive, chunk_elements=1), whole)
    assert (~same[anchor, whole]).all()  # every chosen index is a negative of its anchor


def test_semi_hard_one_label_everywhere_is_zero():
    emb = torch.randn(6, 3, requires_grad=True)
    loss = semi_hard_triplet_loss(emb, torch.zeros(6, dtype=torch.long))  # positives but no negatives
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()


def reference_vivi_infonce(pred, keys, pred_video, pred_target, key_video):
    """For each prediction: -log(exp(s_pos) / (exp(s_pos) + sum over keys of other videos exp(s)))."""
    total = 0.0
    for i in range(pred.shape[0]):
        s = [float(pred[i] @ keys[j]) for j in range(keys.shape[0])]
        pos = s[pred_target[i]]
        denom = math.exp(pos) + sum(math.exp(s[j]) for j in range(len(s)) if key_video[j] != pred_video[i])
        total += -(pos - math.log(denom))
    return total / pred.shape[0]


def test_infonce_matches_reference():
    g = torch.Generator().manual_seed(0)
    V, K, D = 3, 4, 6
    keys = torch.randn(V * K, D, generator=g)
    key_video = torch.arange(V).repeat_interleave(K)
    # predict shots 1..K-1 of each video
    pred_video = torch.arange(V).repeat_interleave(K - 1)
    pred_target = torch.tensor([v * K + t for v in range(V) for t in range(1, K)])
    pred = torch.randn(len(pred_target), D, generator=g)
    got = InfoNCELoss()(pred, keys, pred_video, key_video, pred_target)
    want = reference_vivi_infonce(pred, keys, pred_video.tolist(), pred_target.tolist(), key_video.tolist())
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_candidates_exclude_same_video_but_keep_positive():
    qv = torch.tensor([0, 1])
    kv = torch.tensor([0, 0, 1, 1])
    mask = other_video_candidates(qv, kv, torch.tensor([1, 2]))
    assert mask.tolist() == [[False, True, True, True], [True, True, True, False]]


def test_infonce_two_candidates_hand_worked():
    scores = torch.tensor([[2.0, 0.0, 5.0]])
    cand = torch.tensor([[True, True, False]])
    # -log(e^2 / (e^2 + e^0))
    assert info_nce(scores, torch.tensor([0]), cand).item() == pytest.approx(math.log(1 + math.exp(-2.0)))


def test_exemplars_are_shots_and_other_shots_of_the_same_video_are_negatives():
    """Section 3.2: the F frames of a shot are one exemplar (positives of each other); every other
    shot, of the same video or not, is a negative. Batch layout [V, K, F] flattened row-major."""
    from vivi.models.vivi import exemplar_labels

    v, k, f = 2, 3, 2
    labels = exemplar_labels(v, k, f, torch.device("cpu")).tolist()
    for i in range(v * k * f):
        for j in range(v * k * f):
            same_shot = (i // (k * f), (i // f) % k) == (j // (k * f), (j // f) % k)
            assert (labels[i] == labels[j]) == same_shot


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_triplet_groups_are_separate_losses_averaged(group, squared, monkeypatch):
    """loss.triplet_group (the paper's per-core triplet loss, Appendix B) against the slow reference run
    on each group of ``group`` consecutive shots separately, then averaged over all pairs. Groups that
    divide the batch (1, 2, 3 of 6 shots) are computed block by block; 4 leaves a shorter last group."""
    from vivi.losses import triplet
    from vivi.train.objective import exemplar_targets

    v, k, f = 3, 2, 3  # 6 shots
    g = torch.Generator().manual_seed(11)
    emb = torch.nn.functional.normalize(torch.randn(v * k * f, 4, generator=g), dim=1)
    labels, pairs = exemplar_targets(v, k, f, torch.device("cpu"))
    shapes = []
    original = triplet.pairwise_distances
    monkeypatch.setattr(triplet, "pairwise_distances", lambda x, squared: shapes.append(tuple(x.shape)) or original(x, squared))
    rows = group * f
    got = semi_hard_triplet_loss(emb, labels, margin=0.5, squared=squared, pairs=pairs, group_rows=rows)
    n = v * k * f
    assert shapes == [(n // rows, rows, 4) if n % rows == 0 else (1, n, 4)], "only each group's distances"
    total, pairs_counted = 0.0, 0
    for start in range(0, n, rows):
        sub_labels = labels[start : start + rows].tolist()
        if len(set(sub_labels)) < 2:  # one exemplar alone: no negative, no triplet (as the whole-batch loss)
            continue
        count = len(sub_labels) * (f - 1)  # ordered pairs of frames of one shot
        total += reference_semi_hard(emb[start : start + rows], sub_labels, 0.5, squared) * count
        pairs_counted += count
    if not pairs_counted:
        assert got.item() == 0.0
        return
    assert got.item() == pytest.approx(total / pairs_counted, rel=1e-5, abs=1e-6)
    whole = semi_hard_triplet_loss(emb, labels, margin=0.5, squared=squared)
    if group < v * k:
        assert got.item() != pytest.approx(whole.item(), rel=1e-3), "mining within groups changes the loss"


def test_grouped_triplet_gradients_match_the_groups_computed_apart():
    """The block-by-block loss and its gradient equal those of each group's own loss, weighted by pairs."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, 6, generator=g, requires_grad=True)
    labels = torch.arange(24) // 3  # 8 exemplars of 3 frames; groups of 2 exemplars = 6 rows
    semi_hard_triplet_loss(torch.nn.functional.normalize(x, dim=1), labels, group_rows=6).backward()
    y = x.detach().clone().requires_grad_(True)
    parts = [semi_hard_triplet_loss(torch.nn.functional.normalize(y[i : i + 6], dim=1), labels[i : i + 6]) for i in range(0, 24, 6)]
    (sum(parts) / len(parts)).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)


def test_lstm_infonce_hand_worked_case():
    """Eq. (4) with footnote 2 on two videos of K=3 shots, 1-d embeddings, worked by hand: the query
    predicting shot t+1 of a video competes against every shot of the other video, not its own."""
    import math as m

    keys = torch.tensor([[1.0], [2.0], [0.0], [-1.0], [0.5], [3.0]])  # video 0: shots 0-2, video 1: shots 3-5
    preds = torch.tensor([[1.0], [0.0], [2.0], [-1.0]])  # video 0 -> shots 1, 2; video 1 -> shots 4, 5
    from vivi.models.predictors import prediction_targets
    from vivi.train.objective import video_infonce

    got = video_infonce(InfoNCELoss(), preds, keys, v=2, k=3)
    other1 = [-1.0, 0.5, 3.0]  # keys of video 1
    other0 = [1.0, 2.0, 0.0]  # keys of video 0

    def term(q, pos, others):
        return -q * pos + m.log(m.exp(q * pos) + sum(m.exp(q * o) for o in others))

    want = (term(1.0, 2.0, other1) + term(0.0, 0.0, other1) + term(2.0, 0.5, other0) + term(-1.0, 3.0, other0)) / 4
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert prediction_targets(2, 3, torch.device("cpu"))[2].tolist() == [1, 2, 4, 5]


def test_objective_weights_lambda_and_gamma():
    """L = L_SF + lambda * L_V + gamma * L_sup (Sections 3.1 and co-training), each term its own loss."""
    from vivi.config import LossConfig
    from vivi.models.vivi import VIVIOutput
    from vivi.train.objective import VIVIObjective, video_infonce

    g = torch.Generator().manual_seed(2)
    v, k, f = 2, 2, 2
    out = VIVIOutput(
        exemplar=torch.nn.functional.normalize(torch.randn(v * k * f, 5, generator=g), dim=1),
        predictions=torch.randn(v, k - 1, 3, generator=g), keys=torch.randn(v, k, 3, generator=g),
        logits=torch.randn(4, 6, generator=g),
    )
    labels = torch.tensor([0, 5, 2, 2])
    cfg = LossConfig(video_weight=0.04, sup_weight=0.3)
    terms = VIVIObjective(cfg)(out, v, k, f, labels)
    sf = semi_hard_triplet_loss(out.exemplar, torch.arange(v * k).repeat_interleave(f), 0.5)
    lv = video_infonce(InfoNCELoss(), out.predictions.flatten(0, 1), out.keys.flatten(0, 1), v, k)
    sup = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(terms["loss"], sf + 0.04 * lv + 0.3 * sup)
    torch.testing.assert_close(terms["loss_v"], lv)
