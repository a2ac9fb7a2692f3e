"""Argument checks every loss family shares: each raises the error torch raises for the same
call (the reduction's own handling is in _reduction.py).

Nothing here validates with `assert`: a user's mistake must survive `python -O`.
"""
import warnings

import torch

def check_label_smoothing(label_smoothing):
    if label_smoothing > 1.0:  # torch bounds it above only; a negative value is accepted
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")


def check_same_size(input, target, message):
    if target.size() != input.size():
        raise ValueError(message.format(target=tuple(target.shape), input=tuple(input.shape)))


def warn_if_broadcasting(input, target):
    """torch's warning when a pointwise loss is asked to broadcast target against input."""
    if target.size() != input.size():
        warnings.warn(f"Using a target size ({target.size()}) that is different to the input size "
                      f"({input.size()}). This will likely lead to incorrect results due to "
                      "broadcasting. Please ensure they have the same size.", stacklevel=3)


def check_floating(name, tensor):
    if not tensor.is_floating_point():
        raise RuntimeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def check_class_indices(target, num_classes, ignore_index):
    """Class-index targets: int64 or uint8 as torch requires, each in [0, num_classes) or equal to ignore_index.

    On the CPU an out-of-range target raises IndexError as torch does. On CUDA the check is
    queued on the device (torch._assert_async, as torch's own CUDA kernels assert) so the hot path
    keeps no host synchronisation.
    """
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte (class indices), got {target.dtype}")
    if target.numel() == 0:
        return
    if target.device.type != "cuda" and _class_indices_in_range(target, num_classes, ignore_index):
        return
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if target.device.type == "cuda":
        torch._assert_async(~bad.any(), f"target out of bounds for {num_classes} classes")
    elif bool(bad.any()):
        value = int(target[bad].flatten()[0])
        raise IndexError(f"Target {value} is out of bounds (expected a class index in "
                         f"[0, {num_classes}) or ignore_index={ignore_index}).")


def _class_indices_in_range(target, num_classes, ignore_index):
    """The CPU check's one pass (three ops when ignore_index lies apart from the classes, as
    -100 does): the extremes of the targets, ignored ones counted as class 0."""
    low, high = 0, num_classes - 1
    if ignore_index is not None and -1 <= ignore_index <= num_classes:
        low, high = min(low, ignore_index), max(high, ignore_index)  # still one interval
    elif ignore_index is not None:
        target = target.masked_fill(target == ignore_index, 0)
    smallest, largest = torch.aminmax(target)
    return low <= smallest.tolist() and largest.tolist() <= high


def check_in_range(values, low, high, error, message):
    """Raise error(message) where any of the integer `values` falls outside [low, high).

    As check_class_indices: on CUDA the check is queued on the device (no host synchronisation),
    on the CPU it raises before anything runs.
    """
    if values.numel() == 0:
        return
    bad = (values < low) | (values >= high)
    if values.device.type == "cuda":
        torch._assert_async(~bad.any(), message)
    elif bool(bad.any()):
        raise error(message)


def check_class_weight(weight, num_classes, name="weight"):
    if weight is None:
        return
    if weight.dim() != 1 or weight.numel() != num_classes:
        raise RuntimeError(f"{name} tensor should be defined either for all {num_classes} classes "
                           f"or no classes but got {name} tensor of shape: {list(weight.shape)}")
