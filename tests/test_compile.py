"""Under torch.compile a fusedloss loss runs its kernel eagerly behind a graph break, with the
same values and gradients as without compilation."""
import torch

import fusedloss.functional as F


def test_compiled_model_with_a_fused_loss_matches_eager():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 8, generator=generator)
    hidden = torch.randn(6, 8, generator=generator)
    target = torch.randint(0, 50, (6,), generator=generator)

    def step(w):
        return F.cross_entropy(hidden @ w.t(), target, label_smoothing=0.1) + F.mse_loss(w, w * 0.5)

    eager_w = weight.clone().requires_grad_()
    eager = step(eager_w)
    eager.backward()
    compiled_w = weight.clone().requires_grad_()
    compiled = torch.compile(step)(compiled_w)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_w.grad, eager_w.grad)
