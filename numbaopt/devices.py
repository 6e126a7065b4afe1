"""Where arrays live, and what a step does there.

A backend answers, for one device: is this array mine, is it a valid parameter, turn a
gradient into a contiguous array of the parameter's dtype, allocate slots, give data
addresses to the kernels, and copy to and from the host. ``backend_for`` picks one
backend for all parameters of a call, from where they live.
"""
import importlib

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class CPUBackend:
    """NumPy arrays, updated by the Numba CPU kernels."""

    name = "cpu"

    @staticmethod
    def owns(array):
        return isinstance(array, np.ndarray)

    @property
    def kernels(self):
        return importlib.import_module("numbaopt.kernels.cpu")

    @staticmethod
    def check_parameter(param, index):
        """``param`` itself, once it is known to be updatable in place by a kernel."""
        if not isinstance(param, np.ndarray):
            raise TypeError(
                f"parameter {index} is a {type(param).__name__}; parameters must be arrays "
                "that can be updated in place (NumPy arrays, or CUDA arrays with numbaopt[cuda])"
            )
        if param.dtype not in FLOAT_DTYPES:
            raise TypeError(f"parameter {index} has dtype {param.dtype}; only float32 and float64 are supported")
        if not param.flags.c_contiguous:
            raise ValueError(
                f"parameter {index} is not C-contiguous; pass a contiguous array "
                "(np.ascontiguousarray makes a copy, which would not be updated in place)"
            )
        if not param.flags.writeable:
            raise ValueError(f"parameter {index} is read-only")
        return param

    @staticmethod
    def check_gradient(grad, param, index):
        """The gradient as a C-contiguous array of the parameter's dtype and shape.

        Arrays are cast only when NumPy's ``safe`` rule allows it (float32 into a float64
        parameter, say); a float64 gradient for a float32 parameter is refused rather than
        rounded behind the user's back. Python numbers and lists take the parameter's dtype.
        """
        if isinstance(grad, np.ndarray) or hasattr(grad, "__array_interface__") or isinstance(grad, np.generic):
            grad = np.asarray(grad)
            if grad.dtype != param.dtype:
                if not np.can_cast(grad.dtype, param.dtype, "safe"):
                    raise TypeError(
                        f"gradient {index} has dtype {grad.dtype}, which cannot be cast safely to "
                        f"its parameter's dtype {param.dtype}"
                    )
                grad = grad.astype(param.dtype)
        else:
            try:
                grad = np.asarray(grad, dtype=param.dtype)
            except (TypeError, ValueError) as error:
                raise TypeError(f"gradient {index} is not a numeric array: {error}") from None
        if grad.shape != param.shape:
            raise ValueError(f"gradient {index} has shape {grad.shape}, but its parameter has shape {param.shape}")
        if not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)
        return grad

    @staticmethod
    def check_distinct(params):
        """Refuse parameters that share memory: parallel updates of one element would race."""
        if len(params) < 2:
            return
        starts = CPUBackend.addresses(params)
        ends = starts + np.fromiter((p.nbytes for p in params), np.int64, len(params))
        order = np.argsort(starts, kind="stable")
        sizes = ends[order] - starts[order]
        overlapping = (ends[order][:-1] > starts[order][1:]) & (sizes[:-1] > 0) & (sizes[1:] > 0)
        if overlapping.any():
            k = int(np.argmax(overlapping))
            a, b = sorted((int(order[k]), int(order[k + 1])))
            raise ValueError(f"parameters {a} and {b} share memory; each parameter must be a separate array")

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype)

    @staticmethod
    def to_host(array):
        return np.array(array, copy=True)

    @staticmethod
    def copy_from_host(target, source):
        target[...] = source

    @staticmethod
    def addresses(arrays):
        """The data addresses of NumPy arrays, as an int64 array for the kernels."""
        return np.fromiter((a.__array_interface__["data"][0] for a in arrays), np.int64, len(arrays))


CPU = CPUBackend()
DEVICES = ("auto", "cpu", "cuda")


def backend_for(params, device="auto"):
    """The one backend that owns every parameter of a call.

    NumPy arrays run on the CPU kernels. ``device`` ("auto", "cpu" or "cuda") forces or
    checks the choice.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda":
        raise RuntimeError("device='cuda' needs the CUDA target, which this installation does not have")
    return CPU
