"""Slots as torch shows and saves them, whatever their storage (``slot_dtype``).

A slot kept in the parameter's dtype or float32 is a float tensor indexed like its
parameter; in bfloat16, a ``torch.bfloat16`` tensor over the same memory. An 8-bit slot
(``"q8"``) is its blocks as numbaopt keeps them: a uint8 tensor of one row per block of
256 elements, the 256 codes then the block's float32 scale (``numbaopt.quantization``'s
host form, byte for byte), so a state dict resumes bitwise; the state dict names the
format of its codes, and earlier codes convert on loading. Loading also takes a float
tensor of the parameter's shape for a 16-bit or 8-bit slot (a torch.optim state dict, or
one saved at another ``slot_dtype``): its values rounded or quantized as a step stores them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from numbaopt import devices, quantization
from numbaopt.state import Slot
from numbaopt.torch.working import Order, in_order, logical, slot_dtype

#: The bytes of one block of an 8-bit slot: its codes, then its float32 scale.
BLOCK_BYTES = quantization.HOST_DTYPE.itemsize


def shown(array: npt.NDArray[Any], slot: Slot, order: Order) -> torch.Tensor:
    """The tensor torch shows for the core's host or device ``array`` of ``slot``, sharing its
    memory: indexed like the parameter (its slots lie in memory ``order``), or the blocks."""
    if slot.dtype == "q8":
        return torch.as_tensor(array.view(np.uint8).reshape(-1, BLOCK_BYTES))
    if slot.dtype == "bfloat16":
        return logical(torch.as_tensor(array.view(np.int16)).view(torch.bfloat16), order)
    return logical(torch.as_tensor(array), order)


def host(tensor: torch.Tensor, slot: Slot, order: Order) -> npt.NDArray[Any]:
    """The inverse of ``shown``: the core's host array (C order in memory ``order``)."""
    if slot.dtype == "q8":
        return np.ascontiguousarray(tensor.numpy()).view(quantization.HOST_DTYPE).reshape(-1)
    if slot.dtype == "bfloat16":
        return devices.torch_numpy(in_order(tensor, order))
    return in_order(tensor, order).numpy()


def slot_array(value: object, param: torch.Tensor, slot: Slot, where: str, codes: int = quantization.FORMAT) -> npt.NDArray[Any]:
    """A saved slot (a tensor or array) as a host array of ``slot`` for ``param``, indexed
    like the parameter: exactly the shape and dtype the slot keeps (an 8-bit slot's blocks
    in the codes of checkpoint format ``codes``, converted to today's), or, for a 16-bit or
    8-bit slot, float values of the parameter's shape, stored as a step stores them."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float32, torch.float64, torch.uint8):
            value = devices.torch_numpy(tensor)
        else:
            raise TypeError(f"{where} has dtype {str(tensor.dtype).removeprefix('torch.')}; slots are float32, "
                            "float64, bfloat16 or (8-bit) uint8 blocks")
    array = np.asarray(value)
    shape, kept = slot.shape_of(tuple(param.shape)), slot.dtype_of(str(slot_dtype(param)).removeprefix("torch."))
    if slot.dtype in ("bfloat16", "q8") and array.dtype.kind == "f" and array.dtype != kept:
        logical_shape = tuple(param.shape)
        if array.shape != logical_shape:
            raise ValueError(f"{where} has shape {array.shape}, but its parameter has shape {logical_shape}")
        if slot.dtype == "q8":
            return quantization.quantize(array, slot.sign)
        rounded: npt.NDArray[Any] = np.asarray(array, np.float32).astype(kept)
        return rounded
    if slot.dtype == "q8":
        if array.dtype != np.uint8 or array.shape != (shape[0], BLOCK_BYTES):
            raise ValueError(f"{where} has shape {array.shape} and dtype {array.dtype}, but this 8-bit slot is kept as "
                             f"{shape[0]} blocks of {BLOCK_BYTES} bytes (uint8), or given as float values of shape "
                             f"{tuple(param.shape)}")
        blocks: npt.NDArray[Any] = np.ascontiguousarray(array).view(quantization.HOST_DTYPE).reshape(-1).copy()
        return blocks if codes == quantization.FORMAT else quantization.from_format(blocks, slot.sign, codes)
    if array.shape != shape:
        owned = "its parameter has shape" if slot.shape == "element" else f"its parameter of shape {tuple(param.shape)} keeps one of shape"
        raise ValueError(f"{where} has shape {array.shape}, but {owned} {shape}")
    if array.dtype != kept:
        owned = "its parameter has dtype" if slot.dtype is None else "it is kept as"
        raise TypeError(f"{where} has dtype {array.dtype}, but {owned} {kept.name}")
    return np.array(array, copy=True)


def laid_out(array: npt.NDArray[Any], slot: Slot, order: Order) -> npt.NDArray[Any]:
    """A host ``array`` of ``slot`` indexed like its parameter, laid out in memory ``order``
    (an 8-bit slot's blocks are kept as they are)."""
    if slot.dtype == "q8" or order is None:
        return array
    return host(shown(array, slot, None), slot, order)
