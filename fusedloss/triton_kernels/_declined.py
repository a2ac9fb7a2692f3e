"""The exception a kernel raises, before it launches anything, for a call outside what it
supports: the dispatcher catches it and runs the reference. Defined here, beside the kernels, so
no kernel module imports the dispatcher (or anything else above this package) to raise it."""


class KernelDeclined(Exception):
    """A kernel function cannot take this call; the reference runs instead."""
