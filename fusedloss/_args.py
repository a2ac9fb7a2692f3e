"""Argument checks every loss family shares: each raises the error torch raises for the same
call (the reduction's own handling is in _reduction.py), and the dtype rules: which dtypes the
kernels take (`kernels_take`, the dispatcher's one rule) and the promotion torch applies first.

Nothing here validates with `assert`: a user's mistake must survive `python -O`.
"""
import contextlib
import functools

import torch

from . import _reduction


def check_label_smoothing(label_smoothing):
    if label_smoothing > 1.0:  # torch bounds it above only; a negative value is accepted
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")


def check_same_size(input, target, message):
    if target.size() != input.size():
        raise ValueError(message.format(target=tuple(target.shape), input=tuple(input.shape)))


def warn_if_broadcasting(input, target):
    """torch's warning when a pointwise loss is asked to broadcast target against input."""
    if target.size() != input.size():
        _reduction.warn(f"Using a target size ({target.size()}) that is different to the input "
                        f"size ({input.size()}). This will likely lead to incorrect results due "
                        "to broadcasting. Please ensure they have the same size.", stacklevel=3)


def check_floating(op, tensor):
    """torch's error for a softmax over integer or complex logits (log_softmax has no such kernel)."""
    check_computable(op, tensor.dtype)


_queued_everywhere = False  # checks_queued_as_on_cuda() is in force


def checks_on_host(device):
    """Whether a value check reads its verdict on the host: on the CPU that is a memory read; on
    CUDA it would wait for the device (a host sync), so there the check is queued on the device
    instead (torch._assert_async, as torch's own CUDA kernels assert). While torch.compile
    traces, no value can be read on the host (a data-dependent branch is a graph break): the
    check is queued in the graph on every device and fails when the graph runs, with a
    RuntimeError carrying the same message (on the CPU eagerly: the error type torch raises)."""
    return (device.type != "cuda" and not torch.compiler.is_compiling()
            and not _queued_everywhere)


@contextlib.contextmanager
def checks_queued_as_on_cuda():
    """Every value check in the block takes CUDA's path on any device (queued asserts, which
    torch._assert_async raises at once on the CPU): benchmarks/ count and compile on the CPU
    what a CUDA call runs."""
    global _queued_everywhere
    previous, _queued_everywhere = _queued_everywhere, True
    try:
        yield
    finally:
        _queued_everywhere = previous


def _queue_check(accepted, message):
    """A device assert, queued without a host sync, that every element of the bool tensor
    `accepted` is true; it fails with RuntimeError(message) when the device reaches it.
    Not while torch.compile traces a torch.func transform: the assert has no vmap rule, and the
    wrapped values cannot be unwrapped in a trace (_physical); the reference that runs there
    is left to refuse a bad index as torch's own composition would."""
    if torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return
    torch._assert_async(accepted.all(), message)


def _physical(values):
    """The values under torch.func's wrappers: a vmapped tensor's whole batch, which a check
    reads at once (a host read of a batched tensor is refused), or the tensor a grad transform
    tracks; plain tensors as they are (and always while torch.compile traces, where no
    transform wraps a tensor and dynamo cannot call the functorch query)."""
    if torch.compiler.is_compiling():
        return values
    while torch._C._functorch.is_functorch_wrapped_tensor(values):
        values = torch._C._functorch.get_unwrapped(values)
    return values


def transformed(*tensors):
    """Whether any of `tensors` is wrapped by a torch.func transform (vmap's batched tensors
    among them) or batched by autograd's own vmap (is_grads_batched=True): a check must then
    read it through _physical, not as one host list, and no kernel can take it."""
    return not torch.compiler.is_compiling() and any(
        torch.is_tensor(t) and (torch._C._functorch.is_functorch_wrapped_tensor(t)
                                or torch._C._functorch.is_legacy_batchedtensor(t))
        for t in tensors)


def _check_values(values, in_range_on_host, accepted, refusal, queued_message):
    """The one split of every value check (checks_on_host): on the host, raise refusal() unless
    in_range_on_host() (the check's one cheap pass) holds; elsewhere queue the assert that
    accepted() (a bool tensor over the values) holds everywhere."""
    if values.numel() == 0:
        return
    if not checks_on_host(values.device):
        _queue_check(accepted(), queued_message)
    elif not in_range_on_host():
        raise refusal()


def check_class_indices(target, num_classes, ignore_index, kernel_records=False):
    """Class-index targets: int64 or uint8 as torch requires, each in [0, num_classes) or equal to ignore_index.

    On the CPU an out-of-range target raises IndexError as torch does. On CUDA the check is
    queued on the device (torch._assert_async, as torch's own CUDA kernels assert) so the hot path
    keeps no host synchronisation. `kernel_records`: the call can record the check itself as it
    reads the targets (cross entropy's row kernel); where the check is not the host's, nothing is
    queued here and the assert's message is returned for the call (queue_class_indices where the
    reference runs), else None.
    """
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte (class indices), got {target.dtype}")
    message = f"target out of bounds for {num_classes} classes"
    if kernel_records and kernel_records_check(target):
        return message
    target = _physical(target)

    def accepted():
        return _class_indices_accepted(target, num_classes, ignore_index)

    def refusal():
        value = int(target[~accepted()].flatten()[0])
        return IndexError(f"Target {value} is out of bounds (expected a class index in "
                          f"[0, {num_classes}) or ignore_index={ignore_index}).")
    _check_values(target, lambda: _class_indices_in_range(target, num_classes, ignore_index),
                  accepted, refusal, message)
    return None


def queue_class_indices(target, num_classes, ignore_index, message):
    """check_class_indices' device path alone, for a call it returned the message to."""
    _queue_check(_class_indices_accepted(_physical(target), num_classes, ignore_index), message)


def _class_indices_accepted(target, num_classes, ignore_index):
    classes = (target >= 0) & (target < num_classes)
    return classes if ignore_index is None else classes | (target == ignore_index)


def _class_indices_in_range(target, num_classes, ignore_index):
    """The CPU check's one pass: the extremes of the targets (one op) where ignore_index lies in
    or next to [0, num_classes), else (as -100 does) how many targets fall in each interval
    between 0, num_classes, ignore_index and ignore_index + 1 (two ops)."""
    if ignore_index is None or -1 <= ignore_index <= num_classes:
        low, high = 0, num_classes - 1
        if ignore_index is not None:
            low, high = min(low, ignore_index), max(high, ignore_index)  # still one interval
        smallest, largest = torch.aminmax(target)
        return low <= smallest.tolist() and largest.tolist() <= high
    bounds = sorted((0, num_classes, ignore_index, ignore_index + 1))
    # bucket i holds bounds[i - 1] <= t < bounds[i]: the classes' and ignore_index's buckets
    accepted = (bounds.index(0) + 1, bounds.index(ignore_index) + 1)
    buckets = torch.bucketize(target, torch.tensor(bounds, device=target.device), right=True,
                              out_int32=True)
    counts = torch.bincount(buckets.view(-1), minlength=len(bounds) + 1).tolist()
    return all(count == 0 for bucket, count in enumerate(counts) if bucket not in accepted)


def kernel_records_check(values):
    """Whether a value check over `values` is left to the kernel that reads them, for a call
    whose kernel can record it (a verdict it clears, one queued assert): wherever the check is
    not the host's and there is a value to read."""
    return values.numel() > 0 and not checks_on_host(values.device)


def check_in_range(values, low, high, error, message, kernel_records=False):
    """Raise error(message) where any of the integer `values` falls outside [low, high).
    kernel_records: as check_class_indices'; returns the message where the check is the
    kernel's, else None."""
    if kernel_records and kernel_records_check(values):
        return message
    check_within(values, low, high - 1, error, message)
    return None


def check_within(values, low, high, error, message):
    """Raise error(message) unless every one of `values` lies in [low, high], NaN refused.

    On the host after one aminmax pass, before anything runs; elsewhere (CUDA, torch.compile)
    queued on the device with the same message (_check_values). The values are read detached:
    a check needs no autograd (forward mode has no aminmax on every torch).
    """
    values = _physical(values.detach())

    def in_range_on_host():
        smallest, largest = torch.aminmax(values)
        return low <= smallest.tolist() and largest.tolist() <= high
    _check_values(values, in_range_on_host, lambda: _within(values, low, high),
                  lambda: error(message), message)


def queue_within(values, low, high, message):
    """check_within's device path alone, for a call told that the check is its to queue."""
    _queue_check(_within(_physical(values.detach()), low, high), message)


def _within(values, low, high):
    return (values >= low) & (values <= high)  # NaN compares false: refused


def ctc_labels_in_use(rows, target_lengths, blank):
    """CTC's padded (N, S) labels where each target's length reads them, blank elsewhere (the
    values its range check covers)."""
    used = (torch.arange(rows.shape[1], device=rows.device)
            < target_lengths.to(rows.device).unsqueeze(1))
    return torch.where(used, rows, blank)


CRF_MASK_ERROR = "mask of the first timestep must all be on"


def crf_tag_error(num_tags):
    return (f"tags must be tag indices in [-{num_tags}, {num_tags}) (negative ones counting "
            "from the end) wherever the score reads them")


def crf_tags_read(tags, mask):
    """The CRF's tags where pytorch-crf's gold score reads them, 0 elsewhere (the values its
    range check covers): each step that is on, the step before it (the transition's source, on
    or not) and step L-1 with L the mask's row sum (the end transition)."""
    if mask is None:
        return tags
    read = mask.clone()
    read[:, :-1] |= mask[:, 1:]
    last = (mask.sum(1, keepdim=True) - 1).clamp(min=0)
    return torch.where(read.scatter_(1, last, True), tags, 0)


def check_class_weight(weight, num_classes, dtype, name="weight"):
    """A per-class weight: (num_classes,) and of the input's dtype, as torch's class-index losses
    require (`dtype` None: any floating dtype, where torch promotes instead)."""
    if weight is None:
        return
    if weight.dim() != 1 or weight.numel() != num_classes:
        raise RuntimeError(f"{name} tensor should be defined either for all {num_classes} classes "
                           f"or no classes but got {name} tensor of shape: {list(weight.shape)}")
    if dtype is not None and weight.dtype != dtype:
        raise RuntimeError(f"expected scalar type {type_name(dtype)} but found "
                           f"{type_name(weight.dtype)} ({name} against the input)")


def check_weight_not_differentiated(weight):
    """torch's class-index losses have no gradient for their class weight and say so."""
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("the loss of class-index targets is not differentiable with respect to "
                           "its class weight: the weight cannot have requires_grad=True")


# --- dtypes and devices -------------------------------------------------------------------------

# torch's names for dtypes in its error messages
_TORCH_NAMES = {
    torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
    torch.complex32: "ComplexHalf", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
    torch.uint8: "Byte", torch.bool: "Bool",
}


def type_name(dtype):
    return _TORCH_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def kernels_take(tensors):
    """The one rule for which dtypes the kernels run: they compute in and return floating point,
    so a call whose first tensor (the input) is not floating point (L1 of two integer tensors)
    or that holds a complex tensor (L1 of complex inputs) runs the reference instead, whose torch
    operations promote as torch does. Integer operands beside a floating input (class indices,
    or an integer target that promotion has already cast) are the kernels' to read."""
    tensors = [t for t in tensors if torch.is_tensor(t)]
    return (len(tensors) > 0 and tensors[0].is_floating_point()
            and not any(t.is_complex() for t in tensors))


def check_same_device(*tensors):
    """torch's error for tensors on different devices, before anything reads them."""
    devices = []
    for tensor in tensors:
        if torch.is_tensor(tensor) and tensor.device not in devices:
            devices.append(tensor.device)
    if len(devices) > 1:
        raise RuntimeError("Expected all tensors to be on the same device, but found at least two "
                           f"devices, {devices[0]} and {devices[1]}!")


def result_dtype(*tensors, number=None):
    """The dtype torch computes an expression of these tensors (None ones skipped) in, with a
    Python float `number` beside them, which lifts integer and bool tensors to the default float
    dtype (torch.result_type's rule, written out: dynamo cannot trace that call)."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])
    if number is not None and not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.get_default_dtype()
    return dtype


def promote(dtype, *tensors):
    """Each tensor cast to `dtype` (differentiably; no copy where it already has it)."""
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors)


def check_computable(op, dtype):
    """torch's error where its kernel for `op` exists for floating dtypes only."""
    if not dtype.is_floating_point:
        raise NotImplementedError(f'"{op}" not implemented for \'{type_name(dtype)}\'')


def _kind(dtype):
    """torch's order of dtype kinds for casting: bool < integer < floating < complex."""
    return (3 if dtype.is_complex else 2 if dtype.is_floating_point else
            0 if dtype == torch.bool else 1)


def check_castable(result, out):
    """torch's error where an operation's result dtype cannot be stored in its output dtype
    (torch.can_cast's rule, a cast to no lower kind, written out: dynamo cannot trace that call)."""
    if _kind(result) > _kind(out):
        raise RuntimeError(f"result type {type_name(result)} can't be cast to the desired output "
                           f"type {type_name(out)}")


def check_same_dtype(name, tensor, expected):
    if tensor is not None and tensor.dtype != expected:
        raise RuntimeError(f"Found dtype {type_name(tensor.dtype)} but expected "
                           f"{type_name(expected)} ({name} against the input)")


def check_subtractable(*tensors):
    """torch's `-` refuses bool tensors (the differences of the pointwise and ranking losses)."""
    if any(t.dtype == torch.bool for t in tensors):
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If "
                           "you are trying to invert a mask, use the `~` or `logical_not()` "
                           "operator instead.")
