"""One layer's weights in Keras's layout and in PyTorch's, and the optimizer state moved with them.

Keras and PyTorch store the same weights in other axis orders: a ``Dense`` kernel is
``(inputs, outputs)`` where ``torch.nn.Linear``'s weight is ``(outputs, inputs)``; a
convolution kernel is ``(*spatial, in, out)`` (``Conv2D``: HWIO) where torch's is
``(out, in, *spatial)`` (OIHW). Biases, embeddings and normalisation weights are alike in
both (``"same"``). A slot kept per element moves exactly as its weight does, so a run goes
on bitwise in the other layout (element-wise updates do not care about the order of the
elements); a slot of another shape (Adafactor's factored rows and columns) does not move
with a transposition, and is refused.

    kinds = ["dense", "same"]                       # per parameter, in the optimizer's order
    torch_opt_state = to_torch_optimizer(opt, kinds)  # a new optimizer: same class, config, moved state
    weight = to_torch(kernel, "dense")              # the parameters the same way
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from numbaopt.optimizers.base import Optimizer

_O = TypeVar("_O", bound=Optimizer)

#: Per kind of layer: the axes of Keras's kernel in PyTorch's order (None: the same layout).
KINDS: dict[str, tuple[int, ...] | None] = {
    "same": None,
    "dense": (1, 0),
    "conv1d": (2, 1, 0),
    "conv2d": (3, 2, 0, 1),
    "conv3d": (4, 3, 0, 1, 2),
}


def _axes(kind: str, ndim: int, to: str) -> tuple[int, ...] | None:
    """The transposition of ``kind`` for an array of ``ndim`` axes, Keras to torch or back."""
    if kind not in KINDS:
        raise ValueError(f"unknown layout kind {kind!r}; one of {sorted(KINDS)}")
    axes = KINDS[kind]
    if axes is None:
        return None
    if ndim != len(axes):
        raise ValueError(f"a {kind} kernel has {len(axes)} axes, got an array of {ndim}")
    return axes if to == "torch" else tuple(int(i) for i in np.argsort(axes))


def to_torch(array: npt.ArrayLike, kind: str) -> npt.NDArray[Any]:
    """``array`` (a Keras weight of layer ``kind``) in PyTorch's layout, as a new C-contiguous array."""
    value = np.asarray(array)
    axes = _axes(kind, value.ndim, "torch")
    return np.array(value if axes is None else value.transpose(axes), order="C", copy=True)


def to_keras(array: npt.ArrayLike, kind: str) -> npt.NDArray[Any]:
    """``array`` (a PyTorch weight of layer ``kind``) in Keras's layout: ``to_torch``'s inverse."""
    value = np.asarray(array)
    axes = _axes(kind, value.ndim, "keras")
    return np.array(value if axes is None else value.transpose(axes), order="C", copy=True)


def to_torch_optimizer(optimizer: _O, kinds: Sequence[str]) -> _O:
    """A new optimizer of ``optimizer``'s class and config whose state is ``optimizer``'s
    with every slot in PyTorch's layout (``kinds``: one per parameter, in order); for
    ``numbaopt.save_optimizer`` then ``numbaopt.torch.load_optimizer``."""
    return _moved(optimizer, kinds, to_torch)


def to_keras_optimizer(optimizer: _O, kinds: Sequence[str]) -> _O:
    """``to_torch_optimizer``'s inverse: the state back in Keras's layout."""
    return _moved(optimizer, kinds, to_keras)


def _moved(optimizer: _O, kinds: Sequence[str], move: Any) -> _O:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"needs one of numbaopt's optimizers, got {type(optimizer).__name__}")
    state = optimizer.state()
    if state.parameters is None:
        raise ValueError("the optimizer holds no state bound to parameters yet (take a step, or load its state first)")
    kinds = list(kinds)
    if len(kinds) != len(state.parameters):
        raise ValueError(f"got {len(kinds)} layout kinds for the {len(state.parameters)} parameters of the state")
    for slot in optimizer.slots:
        if slot.shape not in ("element", "tensor") and any(KINDS.get(kind) is not None for kind in kinds):
            raise ValueError(f"the {slot.name} slot is kept per {slot.shape[:-1]}, not per element: it does not move "
                             f"with a transposition of its parameter")
    shapes = [tuple(move(np.empty(shape, np.uint8), kind).shape) for (shape, _), kind in zip(state.parameters, kinds)]
    slots = {}
    for slot in optimizer.slots:
        arrays = state.slots.get(slot.name, [])
        slots[slot.name] = [move(a, kind) if slot.shape == "element" else np.array(a, copy=True)
                            for a, kind in zip(arrays, kinds)]
    moved = type(optimizer).from_checkpoint_config(optimizer.checkpoint_config())
    moved.load_state(state._replace(
        slots=slots, parameters=tuple((shape, dtype) for shape, (_, dtype) in zip(shapes, state.parameters)),
    ))
    moved.load_checkpoint_arrays({name: _moved_array(name, value, kinds, move)
                                  for name, value in optimizer.checkpoint_arrays().items()})
    return moved


def _moved_array(name: str, value: npt.NDArray[Any], kinds: Sequence[str], move: Any) -> npt.NDArray[Any]:
    """A checkpoint array moved with its parameter where it is one per parameter
    (``numbaopt.keras3``'s ``average.<i>`` and ``gradient_accumulator.<i>``)."""
    kind, _, index = name.partition(".")
    if index.isdigit() and kind in ("average", "gradient_accumulator"):
        return move(value, kinds[int(index)])  # type: ignore[no-any-return]
    return value
