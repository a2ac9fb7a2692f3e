"""Differential tests of the linear-chain CRF kernels (crf_nll, crf_decode, crf_marginals) through
the Triton interpreter: each call runs the public function on the kernels and is judged against
the float64 reference by fusedloss.testing's tolerance rule, values and every requested gradient
after a random grad_output (per sequence for reduction='none').

Shapes stay small (the interpreter runs each time step as numpy ops): B <= 4, T <= 8, K = 5 (not
a power of two: padded tile lanes) and K = 4. Decoding must equal the reference exactly.
"""
import pytest
import torch

from fusedloss import _backend, _dispatch
from fusedloss import functional as F
from fusedloss import reference
from fusedloss.nn import CRF
from fusedloss.testing import assert_close_to_reference
from fusedloss.triton_kernels import crf as crf_kernels

# numpy's warnings from the interpreter evaluating log(0) and -inf - -inf in padding lanes the
# kernels then mask away
STEPS = 6
MASKS = {  # name -> per-sequence lengths (None: no mask, every step on)
    "none": None,
    "all_on": [STEPS, STEPS, STEPS],
    "variable": [STEPS, 1, 4],
    "length_1": [1, 1, 1],
}
# steps off between steps on (pytorch-crf applies a mask step by step): one row each of a prefix,
# a hole, and a last step on after steps off
HOLES = [[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 1]]
WHICH_GRADS = {
    "all": (True, True, True, True),
    "emissions": (True, False, False, False),
    "transitions": (False, True, False, False),
    "start_end": (False, False, True, True),
}


def _crf_inputs(batch, steps, num_tags, lengths, dtype=torch.float32, grads=(True,) * 4,
                scale=2.0, seed=0):
    """(emissions, tags, transitions, start, end, mask); `lengths`: per-sequence lengths (a prefix
    mask) or 0/1 mask rows; tags where the mask is off are -1."""
    generator = torch.Generator().manual_seed(seed)

    def scores(*shape):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    tensors = [scores(batch, steps, num_tags), scores(num_tags, num_tags), scores(num_tags),
               scores(num_tags)]
    emissions, transitions, start, end = [t.to(dtype).requires_grad_(g)
                                          for t, g in zip(tensors, grads)]
    tags = torch.randint(0, num_tags, (batch, steps), generator=generator)
    mask = None
    if lengths is not None:
        lengths = torch.tensor(lengths)
        mask = (lengths.bool() if lengths.dim() == 2
                else torch.arange(steps) < lengths.unsqueeze(1))
        tags = torch.where(mask, tags, -1)
    return emissions, tags, transitions, start, end, mask


def test_interpreter_resolves_to_the_kernels():
    assert _backend.interpreting(), "tests/conftest.py must set TRITON_INTERPRET=1"
    for name in ("crf_nll", "crf_decode", "crf_marginals"):
        assert _dispatch.has_kernel(name)
    emissions, tags, transitions, start, end, mask = _crf_inputs(2, 3, 4, [3, 2])
    nll = F.crf_nll(emissions, tags, transitions, start, end, mask)
    assert type(_dispatch.kernel_node(nll)).__name__ == "SweepCapture"
    marginals = F.crf_marginals(emissions, transitions, start, end, mask)
    assert type(_dispatch.kernel_node(marginals)).__name__ == "_CRFMarginalsBackward"


# --- the NLL: reductions x masks x which gradients ----------------------------------------

@pytest.mark.parametrize("num_tags", [5, 4])
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_matches_reference(num_tags, mask_kind, reduction):
    emissions, tags, transitions, start, end, mask = _crf_inputs(3, STEPS, num_tags, MASKS[mask_kind])
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, mask=mask,
                              reduction=reduction)


@pytest.mark.parametrize("which", list(WHICH_GRADS))
def test_nll_gradient_subsets(which):
    emissions, tags, transitions, start, end, mask = _crf_inputs(
        3, STEPS, 5, MASKS["variable"], grads=WHICH_GRADS[which])
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, mask=mask,
                              reduction="none")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nll_dtypes(dtype):
    emissions, tags, transitions, start, end, mask = _crf_inputs(4, STEPS, 5, [6, 1, 4, 5], dtype)
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, mask=mask,
                              reduction="none")
    assert F.crf_nll(emissions, tags, transitions, start, end, mask).dtype == dtype


def test_nll_small_loss_survives_cancellation():
    # a gold path that dominates by far: the loss (~3e-4) is tiny next to log Z and the path
    # score (~100 each). log Z - score in fp32 (the reference's formula at fp32) misses the
    # tolerance; the gold-shifted alpha sweep meets it.
    emissions, tags, transitions, start, end, mask = _crf_inputs(2, 8, 4, [8, 5], grads=(False,) * 4,
                                                                 scale=1.0)
    gold = torch.where(tags >= 0, tags, 0)
    emissions = emissions + 14.0 * torch.nn.functional.one_hot(gold, 4)
    args = (emissions, tags, transitions, start, end, mask)
    truth = reference.crf_nll(*[a.double() if a.is_floating_point() else a for a in args[:5]],
                              mask, reduction="none")
    naive = reference.crf_nll(*args, reduction="none")
    assert (truth < 1e-3).all()
    assert ((naive.double() - truth).abs() > 1e-6 + 1e-5 * truth).any()
    assert_close_to_reference("crf_nll", *args[:5], mask=mask, reduction="none")


def test_nll_strided_inputs_and_forbidden_transitions():
    # time-major emissions viewed batch-first (nn.CRF's default layout), a transposed
    # transition matrix and -inf (forbidden) transitions off the gold paths
    emissions, tags, transitions, start, end, mask = _crf_inputs(3, STEPS, 5, MASKS["variable"],
                                                                 grads=(False,) * 4)
    emissions = emissions.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    forbidden = torch.ones(5, 5, dtype=torch.bool)
    gold = torch.where(tags >= 0, tags, 0)
    forbidden[gold[:, :-1], gold[:, 1:]] = False
    forbidden[:, 0] = False  # keep every position reachable
    transitions = transitions.masked_fill(forbidden, float("-inf")).t().contiguous().t()
    transitions.requires_grad_()
    start.requires_grad_()
    assert not emissions.is_contiguous() and not transitions.is_contiguous()
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, mask=mask,
                              reduction="sum")


def test_empty_batch():
    emissions, tags, transitions, start, end, _ = _crf_inputs(0, 3, 4, None)
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, reduction="sum")
    assert torch.isnan(F.crf_nll(emissions, tags, transitions, start, end))
    scores, best = F.crf_decode(emissions.detach(), transitions, start, end)
    assert scores.shape == (0,) and best.shape == (0, 3)


def test_masks_with_holes_match_reference():
    emissions, tags, transitions, start, end, mask = _crf_inputs(3, STEPS, 5, HOLES)
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, mask=mask,
                              reduction="none")
    assert_close_to_reference("crf_marginals", emissions, transitions, start, end, mask=mask)
    detached = [x.detach() for x in (emissions, transitions, start, end)]
    assert torch.equal(F.crf_decode(*detached, mask=mask)[1],
                       reference.crf_decode(*[x.float() for x in detached], mask=mask)[1])


# --- marginals ------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_marginals_match_reference(mask_kind, dtype):
    emissions, _, transitions, start, end, mask = _crf_inputs(3, STEPS, 5, MASKS[mask_kind], dtype)
    assert_close_to_reference("crf_marginals", emissions, transitions, start, end, mask=mask)


def test_marginals_are_distributions_inside_the_mask():
    emissions, _, transitions, start, end, mask = _crf_inputs(3, STEPS, 5, MASKS["variable"])
    marginals = F.crf_marginals(emissions, transitions, start, end, mask)
    torch.testing.assert_close(marginals.sum(-1), mask.float())


# --- decoding: exactly the reference --------------------------------------------------------

@pytest.mark.parametrize("num_tags", [5, 4])
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_decode_equals_reference(num_tags, mask_kind, dtype):
    emissions, _, transitions, start, end, mask = _crf_inputs(
        3, STEPS, num_tags, MASKS[mask_kind], dtype, grads=(False,) * 4)
    scores, best = F.crf_decode(emissions, transitions, start, end, mask)
    wide = [t.float() for t in (emissions, transitions, start, end)]  # same rounding as fp32 sums
    ref_scores, ref_best = reference.crf_decode(*wide, mask=mask)
    assert torch.equal(best, ref_best)
    assert scores.dtype == dtype
    assert_close_to_reference("crf_decode", emissions, transitions, start, end, mask=mask)


def test_decode_ties_go_to_the_lowest_tag():
    # quarter-integer scores: every path score is exact, so equal paths tie exactly
    generator = torch.Generator().manual_seed(3)

    def scores(*shape):
        return torch.randint(-2, 2, shape, generator=generator).float() / 4

    emissions, transitions, start, end = scores(4, 7, 5), scores(5, 5), scores(5), scores(5)
    mask = torch.arange(7) < torch.tensor([7, 3, 1, 6]).unsqueeze(1)
    for args in [(torch.zeros_like(emissions), torch.zeros_like(transitions), start * 0, end * 0),
                 (emissions, transitions, start, end)]:
        scores_, best = F.crf_decode(*args, mask=mask)
        ref_scores, ref_best = reference.crf_decode(*args, mask=mask)
        assert torch.equal(best, ref_best) and torch.equal(scores_, ref_scores)


# --- tiles: K over several tiles, forced small (the GPU's cover K <= 128 in one) --------------

@pytest.fixture
def tiles_of(monkeypatch):
    def force(tile):
        monkeypatch.setattr(crf_kernels, "MAX_TAG_TILE", tile)
    return force


# a prefix and a hole, two rows of four steps
TILED_MASK = [[1, 1, 1, 0], [1, 0, 1, 1]]


def test_tiled_nll_and_marginals_match_reference(tiles_of):
    tiles_of(8)  # K = 10: three tiles of 4, the last padded
    emissions, tags, transitions, start, end, mask = _crf_inputs(2, 4, 10, TILED_MASK)
    assert_close_to_reference("crf_nll", emissions, tags, transitions, start, end, mask=mask,
                              reduction="none")
    assert_close_to_reference("crf_marginals", emissions, transitions, start, end, mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_decode_equals_reference(tiles_of, dtype):
    tiles_of(8)
    emissions, _, transitions, start, end, mask = _crf_inputs(3, STEPS, 10, HOLES, dtype,
                                                              grads=(False,) * 4)
    scores, best = F.crf_decode(emissions, transitions, start, end, mask)
    wide = [t.float() for t in (emissions, transitions, start, end)]
    ref_scores, ref_best = reference.crf_decode(*wide, mask=mask)
    assert torch.equal(best, ref_best)
    torch.testing.assert_close(scores.float(), ref_scores.to(dtype).float(), rtol=0, atol=0)


def test_tiled_decode_ties_across_tiles_go_to_the_lowest_tag(tiles_of):
    # all scores 0: every path ties, the lowest tag wins in every tile and across tiles
    tiles_of(4)
    zeros = [torch.zeros(2, 4, 5), torch.zeros(5, 5), torch.zeros(5), torch.zeros(5)]
    _, best = F.crf_decode(*zeros)
    assert torch.equal(best, reference.crf_decode(*zeros)[1])
    assert (best == 0).all()


def _every_output(emissions, tags, transitions, start, end, mask):
    """The NLL ('none', a grad_output per sequence) and the marginals with all their gradients,
    and the decoding."""
    params = (emissions, transitions, start, end)
    nll = F.crf_nll(emissions, tags, transitions, start, end, mask, reduction="none")
    outputs = [nll, *torch.autograd.grad(nll, params, torch.linspace(0.5, 1.5, len(nll)))]
    marginals = F.crf_marginals(*params, mask=mask)
    outputs += [marginals, *torch.autograd.grad(marginals, params, torch.cos(marginals))]
    return [*outputs, *F.crf_decode(*[x.detach() for x in params], mask=mask)]


def test_registers_and_tiled_sweeps_agree_bit_for_bit(monkeypatch):
    # with one tile the sweeps keep the state in registers and load each step's inputs one step
    # ahead; the tiled code, forced onto the same single tile, reads the state back from its
    # buffer and loads each step's inputs inside the step. Both add the same numbers in the same
    # order, so the prefetch (which only moves loads) leaves every bit of every output as it was
    emissions, tags, transitions, start, end, mask = _crf_inputs(2, 4, 3, TILED_MASK)
    in_registers = _every_output(emissions, tags, transitions, start, end, mask)
    monkeypatch.setattr(crf_kernels, "_in_registers", lambda num_tags: False)
    tiled = _every_output(emissions, tags, transitions, start, end, mask)
    for a, b in zip(in_registers, tiled, strict=True):
        assert torch.equal(a, b)


def test_transition_partials_do_not_grow_with_the_batch(monkeypatch):
    # the GPU's split of kernel 3: for 'mean'/'sum' at most ~264 programs over all tile pairs
    # (K = 64: one pair; K = 1024: 256 pairs of 64) share every step of the batch once, whatever
    # B; for 'none' one partial per sequence (its own grad_output scales it), never per chunk
    # once B x tile pairs fills the GPU
    monkeypatch.setattr(crf_kernels, "GPU_LAUNCH_PARAMS", True)
    for tile_pairs in (1, 256):
        for batch in (64, 4096):
            programs, share, span = crf_kernels._transition_work(batch, 512, tile_pairs, False)
            assert programs <= -(-264 // tile_pairs) and span == 512
            assert (programs - 1) * share < batch * 512 <= programs * share
    assert crf_kernels._transition_work(64, 512, 256, True) == (64, 512, 512)


def test_many_tags_run_the_kernels():
    # above the old 128-tag limit (five GPU tiles of 64): the kernels take it, nothing declines
    num_tags = 2 * crf_kernels.MAX_TAG_TILE + 3
    emissions, tags, transitions, start, end, mask = _crf_inputs(1, 2, num_tags, [2],
                                                                 grads=(True, False, False, False))
    nll = crf_kernels.crf_nll(emissions, tags, transitions, start, end, mask, reduction="sum")
    torch.testing.assert_close(nll, reference.crf_nll(emissions, tags, transitions, start, end,
                                                      mask, reduction="sum"))


# --- nn.CRF on the kernels against pytorch-crf ----------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean", "token_mean", "none"])
def test_module_matches_pytorch_crf(batch_first, reduction, torchcrf):
    torch.manual_seed(0)
    ours, theirs = CRF(5, batch_first=batch_first), torchcrf.CRF(5, batch_first=batch_first)
    theirs.load_state_dict(ours.state_dict())
    emissions, tags, _, _, _, mask = _crf_inputs(3, STEPS, 5, [6, 2, 4], grads=(True, False, False, False))
    tags = tags.clamp(min=0)  # pytorch-crf reads every tag, also past the length
    if not batch_first:
        emissions, tags, mask = (t.transpose(0, 1) for t in (emissions, tags, mask))
    emissions = emissions.detach()
    results = []
    for module in (ours, theirs):
        x = emissions.clone().requires_grad_()
        out = module(x, tags, mask=mask, reduction=reduction)
        out.backward(torch.linspace(0.5, 1.5, out.numel()).view(out.shape))
        results.append((out, x.grad, *[p.grad for p in module.parameters()]))
        decoded = module.decode(emissions, mask=mask)
        results[-1] += (decoded,)
    *ours_tensors, ours_paths = results[0]
    *theirs_tensors, theirs_paths = results[1]
    assert ours_paths == theirs_paths
    for a, b in zip(ours_tensors, theirs_tensors):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_steps_kernel_reads_lengths_and_tags_as_the_gold_score_does():
    """The first launch's outputs against torch's own count of them: L (the mask's row sum), the
    last step that is on, the tags wrapped into [0, K) exactly where pytorch-crf's gold score
    reads them (each step on, the step before it, step L - 1), 0 elsewhere, and the tag of step
    L - 1, whose end transition it takes."""
    num_tags = 5
    emissions, tags, *_, mask = _crf_inputs(3, STEPS, num_tags, HOLES)
    tags = torch.randint(-num_tags, num_tags, tags.shape, generator=torch.Generator().manual_seed(1))
    steps = crf_kernels._Steps.of(emissions, mask, tags)
    positions = torch.arange(STEPS)
    lengths = mask.sum(1)
    read = mask.clone()
    read[:, :-1] |= mask[:, 1:]
    read[torch.arange(3), (lengths - 1).clamp(min=0)] = True
    assert torch.equal(steps.lengths, lengths)
    assert torch.equal(steps.last, torch.where(mask, positions, 0).amax(1))
    assert torch.equal(steps.tags.long(), torch.where(read, tags.remainder(num_tags), 0))
    assert steps.tags.dtype == torch.int64
    end_steps = (lengths - 1).clamp(min=0)
    assert torch.equal(steps.end_tags, tags.remainder(num_tags)[torch.arange(3), end_steps])


def test_checks_recorded_on_cudas_path_refuse_only_what_is_read():
    """With the checks queued as on CUDA, the steps kernel records the tags' range where the gold
    score reads them and the mask's first step: tags far out of range where nothing reads them
    give the host path's values; a read tag out of range, or a first step off, raises the
    queued assert's RuntimeError."""
    from fusedloss import _args
    emissions, tags, transitions, start, end, mask = _crf_inputs(3, STEPS, 5, HOLES)
    unread = torch.ones_like(mask)
    unread[:, :-1] = ~(mask[:, :-1] | mask[:, 1:])
    unread[torch.arange(3), mask.sum(1) - 1] = False
    unread &= ~mask
    assert unread.any()
    far = torch.where(unread, 1000, tags)
    expected = F.crf_nll(emissions, tags, transitions, start, end, mask, "none")
    expected_grads = torch.autograd.grad(expected.sum(), (emissions, transitions, start, end))
    with _args.checks_queued_as_on_cuda():
        actual = F.crf_nll(emissions, far, transitions, start, end, mask, "none")
        actual_grads = torch.autograd.grad(actual.sum(), (emissions, transitions, start, end))
        read_bad = tags.clone()
        read_bad[1, 0] = 5
        with pytest.raises(RuntimeError, match="tag indices"):
            F.crf_nll(emissions, read_bad, transitions, start, end, mask)
        late_start = mask.clone()
        late_start[2, 0] = False
        for call in (lambda: F.crf_nll(emissions, tags, transitions, start, end, late_start),
                     lambda: F.crf_decode(emissions.detach(), transitions, start, end, late_start),
                     lambda: F.crf_marginals(emissions, transitions, start, end, late_start)):
            with pytest.raises(RuntimeError, match="first timestep"):
                call()
    assert torch.equal(actual, expected)
    for a, e in zip(actual_grads, expected_grads):
        assert torch.equal(a, e)
