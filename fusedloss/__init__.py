"""fusedloss: fused Triton kernels for training losses, checked against a PyTorch reference.

`fusedloss.functional` (alias `fusedloss.F`) mirrors torch.nn.functional, `fusedloss.nn` mirrors
torch.nn, `fusedloss.paddle` keeps Paddle Fluid's names, and `fusedloss.testing` is the
differential fuzzer. The backend switch below picks kernels or reference per call.
"""
__version__ = "0.1.0"  # first: fusedloss._ops stamps it into every compiled graph

from ._backend import BACKENDS, get_backend, set_backend, use_backend  # noqa: E402
from . import functional  # noqa: E402
from . import functional as F  # noqa: E402
from . import nn  # noqa: E402

__all__ = ["BACKENDS", "F", "functional", "get_backend", "nn", "set_backend", "use_backend",
           "__version__"]
