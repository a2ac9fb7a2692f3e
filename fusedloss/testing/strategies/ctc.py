"""Calls of the CTC family: ctc_loss on log-probabilities and ctc_loss_with_logits.

Padded, concatenated and unbatched targets, lengths as tensors or lists, tight and infeasible
alignments (values only without zero_infinity).
"""
import torch
from hypothesis import strategies as st

from ._common import REDUCTIONS, Call, grad, indices, invalid, values, values_only


def _ctc_frames_needed(labels):
    """Fewest frames that can emit `labels`: one per label plus a blank between repeats."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


@st.composite
def _ctc_call(draw, name, dtype):
    num_classes = draw(st.integers(2, 8)) if draw(st.integers(0, 9)) < 9 else draw(st.integers(20, 40))
    blank = draw(st.sampled_from((0, num_classes - 1, num_classes // 2)))
    labels_pool = [c for c in range(num_classes) if c != blank]
    unbatched = draw(st.integers(0, 5)) == 5
    batch = 1 if unbatched else draw(st.integers(1, 4))
    frames = draw(st.integers(1, 12))
    max_target = draw(st.integers(0, 6))
    zero_infinity = draw(st.booleans())
    rows, input_lengths = [], []
    for _ in range(batch):
        length = draw(st.sampled_from((max_target, 0, 1, max_target // 2)))
        row = [labels_pool[i % len(labels_pool)] for i in draw(st.lists(
            st.integers(0, len(labels_pool) - 1), min_size=length, max_size=length))]
        if row and draw(st.booleans()):  # repeats need a blank in between
            row[-1] = row[0]
        rows.append(row)
        needed = _ctc_frames_needed(row)
        limit = draw(st.sampled_from(("full", "tight", "any")))
        if limit == "full" or needed > frames:
            input_lengths.append(frames if limit == "full" else draw(st.integers(0, frames)))
        elif limit == "tight":
            input_lengths.append(needed)
        else:
            input_lengths.append(draw(st.integers(0, frames)))
    target_lengths = [len(r) for r in rows]
    width = max(target_lengths, default=0)
    if unbatched:  # torch takes an unbatched target as exactly its labels, no padding
        targets = torch.tensor(rows[0], dtype=torch.int64)
    elif draw(st.booleans()):  # padded (N, S), padding with a label value
        pad = draw(st.sampled_from((0, blank, num_classes - 1)))
        padded = [r + [pad] * (width - len(r) + draw(st.integers(0, 1))) for r in rows]
        extra = max(len(r) for r in padded)
        targets = torch.tensor([r + [pad] * (extra - len(r)) for r in padded], dtype=torch.int64)
    else:
        targets = torch.tensor([c for r in rows for c in r], dtype=torch.int64)
    scale = draw(st.sampled_from((1.0, 3.0, 10.0)))
    shape = (frames, num_classes) if unbatched else (frames, batch, num_classes)
    logits = draw(values(shape, torch.float64, scale=scale,
                         specials=(1e4, -1e4) if name == "ctc_loss_with_logits" else ()))
    first = logits.to(dtype) if name == "ctc_loss_with_logits" else logits.log_softmax(-1).to(dtype)
    as_list = draw(st.booleans())
    if unbatched:
        il, tl = (input_lengths[0], target_lengths[0]) if not as_list else (input_lengths, target_lengths)
        il = torch.tensor(il) if not as_list else il
        tl = torch.tensor(tl) if not as_list else tl
    else:
        il, tl = (input_lengths, target_lengths) if as_list else (
            torch.tensor(input_lengths), torch.tensor(target_lengths))
    kwargs = dict(blank=blank, reduction=draw(st.sampled_from(REDUCTIONS)), zero_infinity=zero_infinity)
    call = Call(name, (grad(first), targets, il, tl), kwargs)
    infeasible = any(_ctc_frames_needed(r) > n for r, n in zip(rows, input_lengths))
    if infeasible and not zero_infinity:
        values_only(call, "an infeasible alignment (infinite loss) without zero_infinity")
    return call


def ctc_loss_calls(dtype):
    return _ctc_call("ctc_loss", dtype)


def ctc_loss_with_logits_calls(dtype):
    return _ctc_call("ctc_loss_with_logits", dtype)


@st.composite
def invalid_ctc_calls(draw, name):
    frames, batch, classes, width = draw(st.integers(2, 6)), draw(st.integers(1, 3)), draw(st.integers(3, 6)), 2
    lp = draw(values((frames, batch, classes), torch.float64)).log_softmax(-1).float()
    targets = draw(indices((batch, width), classes, 1))
    il = torch.full((batch,), frames, dtype=torch.int64)
    tl = torch.full((batch,), width, dtype=torch.int64)
    kind = draw(st.sampled_from(("input length too long", "negative target length",
                                 "negative input length", "blank out of range", "4-d input",
                                 "target length past padding", "lengths size", "bad reduction")))
    kwargs = {}
    if kind == "input length too long":
        il[0] = frames + 1
    elif kind == "negative target length":
        tl[0] = -1
    elif kind == "negative input length":
        il[0] = -1
    elif kind == "blank out of range":
        kwargs["blank"] = classes
    elif kind == "4-d input":
        lp = lp.unsqueeze(0)
    elif kind == "target length past padding":
        tl[0] = width + 1
    elif kind == "lengths size":
        il = torch.full((batch + 1,), frames, dtype=torch.int64)
    else:
        kwargs["reduction"] = "avg"
    expected = None
    if name == "ctc_loss_with_logits":  # fusedloss mirrors torch's ctc_loss checks here
        expected = ValueError if kind == "bad reduction" else RuntimeError
    return invalid(name, (lp, targets, il, tl), kwargs, expected, kind)
