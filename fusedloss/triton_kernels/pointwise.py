"""Pointwise losses of the difference d = input - target on the generic elementwise kernel
(_elementwise.py): smooth L1, Huber, L1 and MSE, each its jit math plus its launcher.

torch 2.13's weighted mean differs between them: L1 and MSE divide sum(w * loss) by sum(w)
(`weighted_mean`), Huber divides it by the element count.
"""
import triton
import triton.language as tl

from ._elementwise import elementwise_loss
from ._math import sign


@triton.jit
def smooth_l1(x, y, c, beta, p1):
    """0.5 d**2 / beta inside |d| < beta, |d| - beta / 2 outside (beta = 0: never inside, so L1)."""
    d = x - y
    inside = tl.abs(d) < beta
    loss = tl.where(inside, 0.5 * d * d / beta, tl.abs(d) - 0.5 * beta)
    g = tl.where(inside, d / beta, sign(d))
    return loss, g, -g, tl.zeros_like(d)


@triton.jit
def huber(x, y, c, delta, p1):
    """0.5 d**2 inside |d| < delta, delta * (|d| - delta / 2) outside."""
    d = x - y
    inside = tl.abs(d) < delta
    loss = tl.where(inside, 0.5 * d * d, delta * (tl.abs(d) - 0.5 * delta))
    g = tl.where(inside, d, delta * sign(d))
    return loss, g, -g, tl.zeros_like(d)


@triton.jit
def l1(x, y, c, p0, p1):
    d = x - y
    g = sign(d)
    return tl.abs(d), g, -g, tl.zeros_like(d)


@triton.jit
def mse(x, y, c, p0, p1):
    d = x - y
    return d * d, 2 * d, -2 * d, tl.zeros_like(d)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    return elementwise_loss(smooth_l1, (input, target), None, reduction, beta)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    return elementwise_loss(huber, (input, target), weight, reduction, delta)


def l1_loss(input, target, reduction="mean", weight=None):
    return elementwise_loss(l1, (input, target), weight, reduction, weighted_mean=True)


def mse_loss(input, target, reduction="mean", weight=None):
    return elementwise_loss(mse, (input, target), weight, reduction, weighted_mean=True)


KERNELS = {
    "smooth_l1_loss": smooth_l1_loss,
    "huber_loss": huber_loss,
    "l1_loss": l1_loss,
    "mse_loss": mse_loss,
}
