"""Where arrays live, and what a step does there.

A backend answers, for one device: is this array mine, is it a valid parameter, turn a
gradient into a contiguous array of the parameter's dtype, allocate slots, give data
addresses to the kernels, and copy to and from the host. ``backend_for`` picks one
backend for all parameters of a call, from where they live.
"""
from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from numbaopt import halves
from numbaopt.extras import install_command

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_parameter_dtype(dtype: Any) -> bool:
    """Whether parameters of ``dtype`` can be stepped: float32, float64, and the 16-bit
    floats bfloat16 (ml_dtypes) and float16 (``numbaopt.halves``)."""
    return dtype in FLOAT_DTYPES or halves.format_of(dtype) is not None


_DTYPES_TAKEN = "only float32, float64, bfloat16 and float16 are supported"


class CPUBackend:
    """NumPy arrays, updated by the Numba CPU kernels."""

    name = "cpu"

    @staticmethod
    def owns(array: object) -> bool:
        return isinstance(array, np.ndarray)

    @functools.cached_property
    def kernels(self) -> types.ModuleType:
        """The kernel module, imported (with Numba) on first use and kept: it is per step."""
        return importlib.import_module("numbaopt.kernels.cpu")

    @staticmethod
    def check_parameter(param: object, index: int) -> npt.NDArray[Any]:
        """``param`` itself (a CPU torch tensor: a NumPy view of its memory), once it is
        known to be updatable in place by a kernel; an ndarray subclass as an exact
        ndarray view of its memory (its C shape and dtype, never its Python attributes).

        Only what is truly an array is taken, by its type (``type(param)``), not by
        ``isinstance``, which a ``weakref.proxy``, a ``wrapt.ObjectProxy`` or a class that
        lies through ``__class__`` pass: numbaopt writes where the object's own memory
        says, so it must be an array's memory, held alive by the array.
        """
        if type(param) is not np.ndarray:
            if issubclass(type(param), np.ndarray):
                return CPUBackend.check_parameter(np.ndarray.view(param, np.ndarray), index)  # type: ignore[call-overload]  # a subclass instance
            if is_torch_tensor(param):
                return CPUBackend.check_parameter(torch_parameter_view(param, index), index)
            if isinstance(param, np.ndarray):  # it says it is one: a proxy, a __class__ that lies
                raise TypeError(
                    f"parameter {index} is a {_type_name(param)} that passes isinstance(..., np.ndarray) "
                    "without being a NumPy array; pass the array itself (a proxy's wrapped array)"
                )
            raise TypeError(
                f"parameter {index} is a {type(param).__name__}; parameters must be arrays "
                "that can be updated in place (NumPy arrays, or CUDA arrays with the cuda extra)"
            )
        if not is_parameter_dtype(param.dtype):
            raise TypeError(f"parameter {index} has dtype {param.dtype}; {_DTYPES_TAKEN}")
        if not param.flags.c_contiguous:
            raise ValueError(
                f"parameter {index} is not C-contiguous; pass a contiguous array "
                "(np.ascontiguousarray makes a copy, which would not be updated in place)"
            )
        if not param.flags.writeable:
            raise ValueError(f"parameter {index} is read-only")
        return param

    @staticmethod
    def check_gradient(grad: npt.ArrayLike, param: npt.NDArray[Any], index: int) -> npt.NDArray[Any]:
        """The gradient as a C-contiguous array of the parameter's dtype and shape.

        The one cast policy (``cast_gradient``) for NumPy, torch, JAX and other typed
        arrays; Python numbers and lists take the parameter's dtype.
        """
        if type(grad) is np.ndarray and grad.dtype == param.dtype and grad.shape == param.shape and grad.flags.c_contiguous:
            return grad  # the usual case, in the fewest checks: it is per tensor and per step
        if is_cuda_array(grad):
            raise TypeError(
                f"gradient {index} is a CUDA array, but its parameter is a NumPy array on the host; "
                "a gradient must live on its parameter's device"
            )
        if is_torch_tensor(grad):
            grad = _torch_host_array(grad, param.dtype, index)
        elif isinstance(grad, np.ndarray) and not issubclass(type(grad), np.ndarray):
            # a proxy or a __class__ that lies: NumPy's view of it would not keep the
            # wrapped memory alive through the step, so it is read once, into a copy
            grad = np.array(grad, copy=True)
        if isinstance(grad, (np.ndarray, np.generic)) or hasattr(grad, "__array_interface__") or hasattr(grad, "dtype"):
            grad = cast_gradient(np.asarray(grad), param.dtype, index)
        else:
            grad = _weak_gradient(grad, param.dtype, index)
        if grad.shape != param.shape:
            raise ValueError(f"gradient {index} has shape {grad.shape}, but its parameter has shape {param.shape}")
        if not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)
        return grad

    @staticmethod
    def check_distinct(params: Sequence[npt.NDArray[Any]]) -> None:
        """Refuse parameters that share memory: parallel updates of one element would race."""
        _refuse_overlaps(CPUBackend.addresses(params), [p.nbytes for p in params])

    @staticmethod
    def sum(partial_sums: npt.NDArray[np.float64]) -> float:
        """The sum of the global norm's chunk sums, in NumPy's fixed (pairwise) order."""
        return float(np.sum(partial_sums))

    @staticmethod
    def zeros(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        return np.zeros(shape, dtype)

    @staticmethod
    def to_host(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.array(array, copy=True)

    @staticmethod
    def copy_from_host(target: npt.NDArray[Any], source: npt.ArrayLike) -> None:
        target[...] = source

    @staticmethod
    def addresses(arrays: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
        """The data addresses of exact NumPy arrays (``check_parameter`` and
        ``check_gradient`` make them), as an int64 array for the kernels; a TypeError for
        any other object. Read by a compiled loop (``numbaopt.kernels.object_layout``): a
        step over many small tensors would otherwise spend more time in
        ``__array_interface__`` than in the kernel."""
        return CPU.object_layout.data_addresses(arrays)  # type: ignore[no-any-return]  # a lazily imported module

    @staticmethod
    def pair_reader(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]]) -> PairReader | None:
        """A function that checks a step's list of ``(gradient, parameter)`` pairs against
        parameters of ``shapes`` and ``dtypes`` in one compiled pass and returns their
        parameter and gradient addresses, or None when a pair needs the full checks.

        Every step of a bound optimizer asks: with a thousand small tensors, checking each
        array in Python costs more than the kernel. None where the object layout cannot
        be trusted, on a free-threaded Python among others (``numbaopt.kernels.object_layout``).
        """
        return CPU.object_layout.pair_reader(shapes, dtypes)  # type: ignore[no-any-return]  # a lazily imported module

    @functools.cached_property
    def object_layout(self) -> types.ModuleType:
        """The fast path's quarantined reader of object layouts, imported (with Numba) on first use."""
        return importlib.import_module("numbaopt.kernels.object_layout")


def _refuse_overlaps(starts: npt.NDArray[np.int64], nbytes: Sequence[int]) -> None:
    """Refuse parameters (data addresses ``starts``, sizes ``nbytes``) that share memory."""
    if len(starts) < 2:
        return
    starts = np.asarray(starts, np.int64)
    ends = starts + np.asarray(nbytes, np.int64)
    order = np.argsort(starts, kind="stable")
    sizes = ends[order] - starts[order]
    overlapping = (ends[order][:-1] > starts[order][1:]) & (sizes[:-1] > 0) & (sizes[1:] > 0)
    if overlapping.any():
        k = int(np.argmax(overlapping))
        a, b = sorted((int(order[k]), int(order[k + 1])))
        raise ValueError(f"parameters {a} and {b} share memory; each parameter must be a separate array")


# ------------------------------------------------------------ the gradient cast policy


def cast_gradient(grad: npt.NDArray[Any], dtype: np.dtype[Any], index: int) -> npt.NDArray[Any]:
    """``grad`` in ``dtype``, cast only where ``check_cast`` allows it."""
    if grad.dtype == dtype:
        return grad
    check_cast(grad.dtype.name, dtype, index)
    return grad.astype(dtype)


def check_cast(source: str, dtype: np.dtype[Any], index: int) -> None:
    """Raise unless a gradient of dtype ``source`` (a name: NumPy's, or torch's without
    ``torch.``) may be cast to its parameter's ``dtype``.

    The one policy for arrays of every kind (NumPy, torch, JAX, CuPy): NumPy's ``safe``
    rule. float16 and bfloat16 (which NumPy knows only through ml_dtypes, so by name) widen
    exactly into float32 or float64; float64 into float32 would round, complex would drop
    a part, and a bool is no gradient (NumPy calls bool into float safe): a TypeError that
    names the gradient's index.
    """
    kind: str
    try:
        kind = "f" if source == "bfloat16" else np.dtype(source).kind
        safe = source == "bfloat16" or (kind in "iuf" and np.can_cast(np.dtype(source), dtype, "safe"))
    except TypeError:  # a dtype NumPy does not know (float8, complex32, quantized)
        kind, safe = "?", False
    if not safe:
        raise TypeError(
            f"gradient {index} has dtype {source}, which cannot be cast safely to its parameter's "
            f"dtype {dtype}" + ("; a gradient is a real number, not a bool" if kind == "b" else "")
        )


def _weak_gradient(grad: object, dtype: np.dtype[Any], index: int) -> npt.NDArray[Any]:
    """A Python number or (nested) list as an array of ``dtype``.

    Python numbers carry no precision of their own (NumPy's NEP 50 calls them weak), so
    they take the parameter's dtype, as ``float32_array * 0.1`` stays float32; only bool
    and complex values, which no float parameter can take, are refused.
    """
    try:
        array = np.asarray(grad)
    except (TypeError, ValueError) as error:
        raise TypeError(f"gradient {index} is not a numeric array: {error}") from None
    if array.dtype.kind not in "iuf":
        what = {"b": "bools", "c": "complex numbers"}.get(array.dtype.kind, f"dtype {array.dtype}")
        raise TypeError(f"gradient {index} is not a numeric array of real numbers: it holds {what}")
    return array.astype(dtype, copy=False)


# ------------------------------------------------------------------ torch tensors


def is_torch_tensor(array: object) -> bool:
    """Whether ``array`` is a ``torch.Tensor`` (by its type: a proxy of one is not); never
    imports torch (if torch is not imported, nothing can be a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and issubclass(type(array), torch.Tensor)


def _type_name(value: object) -> str:
    """The true type of ``value``, as its module and name (``weakref.ProxyType``)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


_TORCH_FLOATS = ("torch.float32", "torch.float64", "torch.bfloat16", "torch.float16")


def torch_parameter_view(param: Any, index: int) -> Any:
    """A NumPy view of a CPU tensor's memory (``detach`` shares it), or the reason it cannot be updated in place."""
    if str(param.dtype) not in _TORCH_FLOATS:
        raise TypeError(f"parameter {index} has dtype {param.dtype}; {_DTYPES_TAKEN}")
    if param.device.type != "cpu":  # a meta tensor, say: no memory to update
        raise TypeError(f"parameter {index} is a torch tensor on the {param.device.type} device, which has no "
                        "memory numbaopt can update; pass a CPU or CUDA tensor")
    if param.is_neg():
        raise ValueError(
            f"parameter {index} is a negative view (its negation bit is set): its memory holds the negated "
            "values; pass the tensor itself (.resolve_neg() makes a copy, which would not be updated in place)"
        )
    if not param.is_contiguous():
        raise ValueError(
            f"parameter {index} is not C-contiguous; pass a contiguous tensor "
            "(.contiguous() makes a copy, which would not be updated in place)"
        )
    return torch_numpy(param.detach())


def torch_numpy(tensor: Any) -> npt.NDArray[Any]:
    """A NumPy view of a CPU tensor's memory; a bfloat16 tensor's as ml_dtypes' bfloat16
    (NumPy has none, so torch gives none: its bits are viewed as int16, then retyped)."""
    if str(tensor.dtype) == "torch.bfloat16":
        return tensor.view(sys.modules["torch"].int16).numpy().view(halves.bfloat16())  # type: ignore[no-any-return]
    return tensor.numpy()  # type: ignore[no-any-return]  # a torch.Tensor


def torch_dtype_name(tensor: Any) -> str:
    """A tensor's dtype as NumPy names it (``torch.float32`` -> ``float32``)."""
    return str(tensor.dtype).removeprefix("torch.")


def _torch_host_array(grad: Any, dtype: np.dtype[Any], index: int) -> npt.NDArray[Any]:
    """A CPU tensor gradient as a NumPy array of ``dtype`` (a view when no cast is needed).

    A tensor that requires grad is read through ``detach()``: the optimizer reads the
    values, as torch's own optimizers do, and records nothing in the graph.
    """
    check_cast(torch_dtype_name(grad), dtype, index)
    if str(grad.layout) != "torch.strided":
        raise TypeError(f"gradient {index} is a {grad.layout} tensor; pass a dense gradient (.to_dense())")
    if grad.device.type not in ("cpu", "cuda"):  # meta: no values to read
        raise TypeError(f"gradient {index} is a torch tensor on the {grad.device.type} device, which has no values")
    # A negative view's memory holds the negated values: they are read resolved (a copy),
    # as torch's own operations read them.
    grad = grad.detach().resolve_neg()
    if str(grad.dtype) != f"torch.{dtype.name}":
        grad = grad.to(getattr(sys.modules["torch"], dtype.name))  # a safe cast: exact
    try:
        return torch_numpy(grad)
    except (TypeError, RuntimeError) as error:  # a meta or conjugate-view tensor, say
        raise TypeError(f"gradient {index} cannot be read as an array on the host: {error}") from None


def mark_modified(params: Sequence[Any]) -> None:
    """Tell autograd that the torch tensors among ``params`` were written in place.

    torch's own optimizers update under ``no_grad`` with in-place ops, which bump each
    tensor's version counter; a kernel writing through a NumPy view does not, so it is
    bumped here, and ``backward()`` through a graph that saved the old values raises
    torch's usual in-place error instead of computing wrong gradients.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    tensors = [p for p in params if type(p) is not np.ndarray and isinstance(p, torch.Tensor)]
    if tensors:
        torch.autograd.graph.increment_version(tensors)


def is_cuda_array(array: object) -> bool:
    """Whether ``array`` lives on a CUDA device (or on Numba's CUDA simulator).

    Real device arrays (Numba, CuPy, PyTorch CUDA tensors) expose
    ``__cuda_array_interface__``. The simulator's device arrays expose none; they are
    recognised by class, looked up only if the simulator is already imported (whoever
    made one imported it), so NumPy arrays never cost an import of ``numba.cuda``.
    """
    if isinstance(array, np.ndarray):
        return False
    if is_torch_tensor(array):  # asked first: a torch tensor that requires grad raises on the interface
        return array.device.type == "cuda"  # type: ignore[attr-defined, no-any-return]  # a torch.Tensor
    if hasattr(array, "__cuda_array_interface__"):
        return True
    simulator = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return simulator is not None and isinstance(array, simulator.FakeCUDAArray)


class CUDABackend:
    """CUDA arrays, updated in place by the CUDA kernels; their slots live on the same device.

    Parameters and gradients are taken as they are, zero-copy (CuPy arrays and PyTorch
    tensors through Numba views of the same memory); only ``get_weights`` /
    ``set_weights`` and the global norm's one scalar cross to and from the host.

    Its arrays are Numba device arrays (or CuPy / PyTorch arrays viewed as such), which
    have no type information: they are ``Any`` here.
    """

    name = "cuda"

    def __init__(self, cuda: types.ModuleType) -> None:
        self._cuda = cuda

    @functools.cached_property
    def kernels(self) -> types.ModuleType:
        """The kernel module, imported (with Numba) on first use and kept: it is per step."""
        return importlib.import_module("numbaopt.kernels.cuda")

    def _view(self, array: Any) -> Any:
        """A Numba device array over ``array``'s memory (the array itself if it is one)."""
        if hasattr(array, "copy_to_host"):  # Numba's (or the simulator's) device array
            return array
        return self._cuda.as_cuda_array(array)

    @staticmethod
    def pair_reader(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]]) -> PairReader | None:
        """None: CUDA arrays take the full checks at every step (a launch costs more)."""
        return None

    def check_parameter(self, param: Any, index: int) -> Any:
        """A Numba device array over ``param``'s memory, once it is updatable in place."""
        if not is_cuda_array(param):
            raise TypeError(f"parameter {index} is a {type(param).__name__}, not a CUDA array")
        if is_torch_tensor(param):  # detached: a tensor that requires grad has no interface
            param = param.detach()
        interface = getattr(param, "__cuda_array_interface__", None)
        if interface is not None and interface["data"][1]:
            raise ValueError(f"parameter {index} is read-only")
        param = self._view(param)
        if param.dtype not in FLOAT_DTYPES and param.dtype != np.float16:
            # Numba's device arrays know no bfloat16 (nor does the CUDA array interface)
            raise TypeError(f"parameter {index} has dtype {param.dtype}; CUDA parameters are float32, float64 or float16")
        if not param.is_c_contiguous():
            raise ValueError(f"parameter {index} is not C-contiguous; pass a contiguous CUDA array")
        return param

    def check_gradient(self, grad: Any, param: Any, index: int) -> Any:
        """The gradient as a device array: on the GPU, of the parameter's dtype and shape.

        Nothing is copied to or from the host: a host gradient or a strided gradient is
        refused with the reason. Another dtype follows the host's cast policy
        (``check_cast``), cast on the device by the array's own library (torch, CuPy);
        a Numba device array, which cannot cast, must come in the parameter's dtype.
        """
        if not is_cuda_array(grad):
            raise TypeError(
                f"gradient {index} is a {type(grad).__name__} on the host, but its parameter is a CUDA "
                "array; a gradient must live on its parameter's device"
            )
        if is_torch_tensor(grad):
            check_cast(torch_dtype_name(grad), param.dtype, index)
            grad = grad.detach().to(getattr(sys.modules["torch"], param.dtype.name))  # no copy if no cast
        elif not hasattr(grad, "copy_to_host") and np.dtype(grad.dtype) != param.dtype:  # CuPy and the like
            check_cast(np.dtype(grad.dtype).name, param.dtype, index)
            grad = grad.astype(param.dtype)
        grad = self._view(grad)
        if grad.dtype != param.dtype:
            check_cast(grad.dtype.name, param.dtype, index)
            raise TypeError(
                f"gradient {index} has dtype {grad.dtype}, but its parameter has dtype {param.dtype}; "
                "a Numba device array is not cast: cast it on the device first"
            )
        if tuple(grad.shape) != tuple(param.shape):
            raise ValueError(f"gradient {index} has shape {tuple(grad.shape)}, but its parameter has shape {tuple(param.shape)}")
        if not grad.is_c_contiguous():
            raise ValueError(f"gradient {index} is not C-contiguous; pass a contiguous CUDA array")
        return grad

    def check_distinct(self, params: Sequence[Any]) -> None:
        """Refuse parameters that share memory: parallel updates of one element would race."""
        _refuse_overlaps(self.addresses(params), [p.nbytes for p in params])

    def sum(self, partial_sums: Any) -> float:
        """The sum of the device array ``partial_sums``: only this scalar comes to the host."""
        return self.kernels.total(partial_sums)  # type: ignore[no-any-return]  # an untyped module attribute

    def zeros(self, shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> Any:
        return self.kernels.zeros(shape, dtype)

    @staticmethod
    def to_host(array: Any) -> npt.NDArray[Any]:
        return array.copy_to_host()  # type: ignore[no-any-return]  # Numba device arrays are untyped

    @staticmethod
    def copy_from_host(target: Any, source: npt.ArrayLike) -> None:
        target.copy_to_device(np.ascontiguousarray(source))

    @staticmethod
    def addresses(arrays: Sequence[Any]) -> npt.NDArray[np.int64]:
        """The device data addresses of the arrays, as a host int64 array.

        A simulated device array's memory is a NumPy buffer on the host: its address is
        that buffer's, which the simulated kernels read.
        """
        def address(a: Any) -> int:
            interface = getattr(a, "__cuda_array_interface__", None)
            return (interface or a.__array_interface__)["data"][0]  # type: ignore[no-any-return]  # untyped array

        return np.fromiter((address(a) for a in arrays), np.int64, len(arrays))


CPU = CPUBackend()
DEVICES = ("auto", "cpu", "cuda")
_CUDA: list[CUDABackend] = []  # the CUDA backend, once made

if TYPE_CHECKING:
    from typing import TypeAlias

    #: A backend: where the arrays of a call live.
    Backend: TypeAlias = CPUBackend | CUDABackend
    #: Checks a step's pairs against bound parameters: their addresses, or None (``pair_reader``).
    PairReader: TypeAlias = Callable[[list[Any]], tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None]


def cuda_backend() -> CUDABackend:
    """The CUDA backend, or a RuntimeError that says what is missing."""
    if not _CUDA:
        try:
            from numba import cuda
        except ImportError as error:
            raise RuntimeError(
                f"CUDA arrays need the CUDA target, which cannot be imported ({error}); "
                f"install the cuda extra: {install_command('cuda')}"
            ) from None
        if not cuda.is_available():
            raise RuntimeError(
                "CUDA is not available here (no NVIDIA GPU, driver or CUDA target found); on a machine "
                f"with an NVIDIA GPU install the cuda extra ({install_command('cuda')}), or set "
                "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in Numba's simulator"
            )
        _CUDA.append(CUDABackend(cuda))
    return _CUDA[0]


def backend_for(params: Sequence[Any], device: str = "auto") -> Backend:
    """The one backend that owns every parameter of a call.

    NumPy arrays run on the CPU kernels, CUDA arrays on the CUDA kernels; a call that mixes
    them is refused. ``device`` ("auto", "cpu" or "cuda") forces or checks the choice.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    on_gpu = [is_cuda_array(p) for p in params]
    if any(on_gpu) and not all(on_gpu):
        gpu, host = on_gpu.index(True), on_gpu.index(False)
        raise ValueError(
            f"parameter {gpu} is a CUDA array but parameter {host} is not; one call updates "
            "parameters on one device"
        )
    if device == "cpu" and any(on_gpu):
        raise ValueError("device='cpu', but the parameters are CUDA arrays; pass NumPy arrays")
    if device == "cuda" or any(on_gpu):
        backend = cuda_backend()  # raises if CUDA is not available
        if not any(on_gpu):
            raise ValueError(
                "device='cuda', but the parameters are host arrays; pass CUDA arrays "
                "(numba.cuda.to_device, CuPy, PyTorch CUDA tensors), which are updated in place"
            )
        return backend
    return CPU
