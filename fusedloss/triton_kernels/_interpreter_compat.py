"""Two fixes to Triton's CPU interpreter, installed only under TRITON_INTERPRET=1 (compiled
kernels are untouched).

- numpy >= 2.4 on triton releases before 3.7: those interpreters turn a scalar kernel value (held
  as a one-element array) into a Python index with `int(array)`, which numpy 2.4 refuses for
  arrays that are not 0-dimensional, so every `for ... in range(<runtime value>)` in a kernel
  fails. triton 3.7 fixed it upstream; here the index is taken with `.item()`, the same value.
- Speed, every release: the interpreter re-patches triton.language (an `inspect.getmembers`
  walk of four modules, about 1.5 ms) on every call of a @triton.jit helper from inside a
  kernel, although the kernel's launch has already patched those very modules and restores
  them when it ends. The kernels call helpers inside their time and tile loops, so in the
  sequence losses that walk was about 40% of the interpreter's time. A helper call whose
  language modules are already patched now skips it; a launch still patches and restores as
  before.
"""
import triton


def _needs_index_fix():
    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    return (major, minor) < (3, 7)


def _install_index_fix(interpreter):
    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch_lang_tensor


class _AlreadyPatched:
    """The scope of a helper call that patched nothing: nothing to restore."""

    def restore(self):
        pass


def _install_nested_patch_skip(interpreter):
    original = interpreter._patch_lang
    launch = {}  # while a launch runs: "modules", the language modules its scope patched

    def language_modules(fn):
        return {id(value) for value in fn.__globals__.values()
                if value is interpreter.tl or value is interpreter.tl.core}

    def patch_lang(fn):
        modules = language_modules(fn)
        if "modules" in launch:  # a helper called from the running kernel
            if modules <= launch["modules"]:
                return _AlreadyPatched()
            launch["modules"] |= modules  # (triton.language.standard's helpers see tl.core)
            return original(fn)
        scope = original(fn)  # a launch: it restores its scope when the grid is done
        launch["modules"] = modules
        restore = scope.restore

        def restore_and_end():
            restore()
            launch.clear()

        scope.restore = restore_and_end
        return scope

    interpreter._patch_lang = patch_lang


def install():
    """Patch the interpreter; idempotent."""
    from triton.runtime import interpreter
    if getattr(interpreter, "_fusedloss_patched", False):
        return
    if _needs_index_fix():
        _install_index_fix(interpreter)
    _install_nested_patch_skip(interpreter)
    interpreter._fusedloss_patched = True
