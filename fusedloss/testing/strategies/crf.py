"""Calls of the linear-chain CRF family: crf_nll, crf_decode, crf_marginals.

Batch-first emissions with prefix masks or masks with holes (steps off between steps on, which
pytorch-crf applies step by step), bool or uint8; decoding draws exact scores so ties are real
ties.
"""
import torch
from hypothesis import strategies as st

from ._common import REDUCTIONS, Call, grad, indices, invalid, on_other_device, values


@st.composite
def _crf_parts(draw, dtype, exact=False, min_tags=1):
    batch = draw(st.integers(0, 4)) if draw(st.integers(0, 9)) == 9 else draw(st.integers(1, 4))
    steps = draw(st.integers(1, 6))
    # one tag makes the NLL exactly 0 = log Z - score: all rounding, no relative tolerance holds
    tags = draw(st.integers(min_tags, 8)) if draw(st.integers(0, 9)) < 9 else draw(st.integers(30, 40))

    def scores(shape):
        if exact:  # multiples of 1/4: every path score is exact in every dtype, ties are real ties
            return (draw(indices(shape, 17, -16)).double() / 4).to(dtype)
        # no +-1e4 here: a CRF loss is a difference of path scores, so huge scores make it a
        # cancellation that no fp32 evaluation can meet a relative tolerance on
        return draw(values(shape, dtype, scale=draw(st.sampled_from((1.0, 3.0))),
                           specials=(0.0, 8.0, -8.0)))

    emissions = scores((batch, steps, tags))
    parts = [emissions, scores((tags, tags)), scores((tags,)), scores((tags,))]
    mask = None
    if draw(st.booleans()):
        lengths = [draw(st.sampled_from((steps, 1, max(1, steps - 1)))) for _ in range(batch)]
        mask = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths, dtype=torch.int64).reshape(-1, 1)
        if draw(st.integers(0, 3)) == 3:  # holes: any steps off after the first
            mask = draw(indices((batch, steps), 2)).bool()
            mask[:, 0] = True
        if draw(st.integers(0, 4)) == 4:
            mask = mask.to(torch.uint8)
    return parts, mask, tags


@st.composite
def crf_nll_calls(draw, dtype):
    (emissions, transitions, start, end), mask, num_tags = draw(_crf_parts(dtype, min_tags=2))
    tags = draw(indices(emissions.shape[:2], num_tags))
    return Call("crf_nll", (grad(emissions), tags, grad(transitions), grad(start), grad(end)),
                dict(mask=mask, reduction=draw(st.sampled_from(REDUCTIONS))))


@st.composite
def crf_decode_calls(draw, dtype):
    (emissions, transitions, start, end), mask, _ = draw(_crf_parts(dtype, exact=True))
    return Call("crf_decode", (emissions, transitions, start, end), dict(mask=mask),
                "exact scores (ties go to the lowest tag)")


@st.composite
def crf_marginals_calls(draw, dtype):
    (emissions, transitions, start, end), mask, _ = draw(_crf_parts(dtype))
    # the gradient on one call in four: its kernel runs four sweeps to the values' two, the
    # slowest path through the interpreter; tests/test_kernel_crf.py checks it on every mask
    on = draw(st.integers(0, 3)) == 3
    return Call("crf_marginals", tuple(grad(x, on) for x in (emissions, transitions, start, end)),
                dict(mask=mask))


@st.composite
def invalid_crf_calls(draw, name):
    batch, steps, tags = draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(2, 5))
    emissions = draw(values((batch, steps, tags), torch.float32))
    transitions = draw(values((tags, tags), torch.float32))
    start, end = draw(values((tags,), torch.float32)), draw(values((tags,), torch.float32))
    mask = torch.ones(batch, steps, dtype=torch.bool)
    kinds = ["first step masked", "2-d emissions", "transitions shape", "mask shape",
             "mask on another device"]
    if name == "crf_nll":
        kinds += ["tags shape", "tag out of range", "bad reduction"]
    kind = draw(st.sampled_from(kinds))
    expected = ValueError
    if kind == "first step masked":
        mask[0, 0] = False
    elif kind == "2-d emissions":
        emissions = emissions[0]
    elif kind == "transitions shape":
        transitions = draw(values((tags + 1, tags), torch.float32))
    elif kind == "mask shape":
        mask = torch.ones(batch, steps + 1, dtype=torch.bool)
    elif kind == "mask on another device":
        mask, expected = on_other_device(mask), RuntimeError
    tag_index = draw(indices((batch, steps), tags))
    kwargs = {"mask": mask}
    if kind == "tags shape":
        tag_index = tag_index[:, :-1]
    elif kind == "tag out of range":
        tag_index[0, 0] = tags
        expected = IndexError
    elif kind == "bad reduction":
        kwargs["reduction"] = "avg"
    if name == "crf_nll":
        args = (emissions, tag_index, transitions, start, end)
    else:
        args = (emissions, transitions, start, end)
    return invalid(name, args, kwargs, expected, kind)
