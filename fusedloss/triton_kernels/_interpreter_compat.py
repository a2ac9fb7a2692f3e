"""Keeps Triton's CPU interpreter working with numpy >= 2.4 on triton releases before 3.7.

Those interpreters turn a scalar kernel value (held as a one-element array) into a Python index
with `int(array)`, which numpy 2.4 refuses for arrays that are not 0-dimensional; every
`for ... in range(<runtime value>)` in a kernel then fails. triton 3.7 fixed it upstream. Here the
interpreter's tensor patching is wrapped once so that the index is taken with `.item()`, the
same value; compiled kernels are untouched (this only runs under TRITON_INTERPRET=1).
"""
import triton


def _needs_patch():
    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    return (major, minor) < (3, 7)


def install():
    """Patch the interpreter when this triton needs it; a no-op otherwise, and idempotent."""
    if not _needs_patch():
        return
    from triton.runtime import interpreter
    original = interpreter._patch_lang_tensor
    if getattr(original, "_fusedloss_index_fix", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor._fusedloss_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor
