"""The dtype a kernel returns its loss in: the inputs' dtype, except under torch.autocast on the
inputs' device type, where a 16-bit loss is returned in float32.

torch's autocast runs its losses in float32 (the CPU's float32 list holds every torch twin of
fusedloss's losses, CUDA's all but binary_cross_entropy, which CUDA refuses, and ctc_loss):
cast to float32, they can neither overflow float16 nor lose a GradScaler's scale. The kernels
read the 16-bit inputs as they are and accumulate in float32 already, so only the final
rounding changes; their gradients keep the inputs' dtypes, as autocast's casts hand them back.
fusedloss returns float32 under autocast for every loss on every device (BCE and CTC included,
where CUDA's torch refuses or keeps 16 bits: the kernels need no 16-bit rounding).
"""
import torch

_LOWER_PRECISION = (torch.float16, torch.bfloat16)


def loss_dtype(dtype, device):
    """The dtype of a loss computed from inputs of `dtype` on `device` (module header)."""
    if dtype in _LOWER_PRECISION and torch.is_autocast_enabled(torch.device(device).type):
        return torch.float32
    return dtype
