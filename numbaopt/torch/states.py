"""``opt.state`` of a numbaopt torch optimizer: the core's slots as tensors, keyed by parameter.

torch code reads and writes ``opt.state[p]["name"]``; here the state lives in the core
optimizer, so each parameter's entry is a dict of tensors over the core's slot memory, and
assigning an entry writes into that memory.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import torch


class SlotState(dict[str, Any]):
    """One parameter's slots by name, tensors of the core's state: assigning a slot a new
    value writes it into that memory (``opt.state[p]["ms"] = t`` is the next step's ``ms``)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self:
            raise KeyError(f"numbaopt keeps {sorted(self)} for each parameter, not {key!r}")
        slot = dict.__getitem__(self, key)
        value = torch.as_tensor(value)
        if value.shape != slot.shape:
            raise ValueError(f"state {key!r} has shape {tuple(slot.shape)}, got a value of shape {tuple(value.shape)}")
        with torch.no_grad():
            slot.copy_(value)


class ParameterStates(MutableMapping[Any, Any]):
    """``opt.state``: each parameter's state (``state_of(i)`` for the parameter at
    ``position(p)`` in ``parameters()``) keyed by the parameter, as torch's; other keys, and
    parameters without state, hold what a user keeps there (``own``, torch's ``defaultdict``)."""

    def __init__(self, parameters: Callable[[], list[Any]], position: Callable[[Any], int | None],
                 state_of: Callable[[int], dict[str, Any]], own: defaultdict[Any, dict[Any, Any]]) -> None:
        self._parameters, self._position, self._state_of, self._own = parameters, position, state_of, own

    def _state(self, key: Any) -> dict[str, Any]:
        i = self._position(key) if isinstance(key, torch.Tensor) else None
        return {} if i is None else self._state_of(i)

    def __getitem__(self, key: Any) -> Any:
        return self._state(key) or self._own[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        state = self._state(key)
        if not state:
            self._own[key] = value
            return
        for name, item in value.items():
            state[name] = item

    def __delitem__(self, key: Any) -> None:
        if self._state(key):
            raise KeyError("a parameter's state is the core optimizer's; it cannot be dropped")
        del self._own[key]

    def _keys(self) -> list[Any]:
        params = self._parameters()
        held = [p for i, p in enumerate(params) if self._state_of(i)]
        ids = {id(p) for p in held}
        return held + [k for k in self._own if id(k) not in ids]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return repr(dict(self.items()))
