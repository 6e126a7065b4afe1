"""Keras 3's names: an optimizer's automatic name, its variables' paths, and which
variables a name pattern picks (``exclude_from_weight_decay``, Muon's ``exclude_layers``).
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable

_taken: Counter[str] = Counter()
_taken_lock = threading.Lock()


def snake_case(class_name: str) -> str:
    """Keras's ``to_snake_case``: ``AdamW`` -> ``adam_w``, ``RMSprop`` -> ``rm_sprop``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def auto_name(class_name: str) -> str:
    """Keras's ``auto_name``: the snake-case class name, then ``_1``, ``_2`` ... for later
    optimizers of the class in this process, as Keras numbers its objects."""
    base = snake_case(class_name)
    with _taken_lock:
        count = _taken[base]
        _taken[base] += 1
    return base if count == 0 else f"{base}_{count}"


def slot_path(optimizer_name: str, parameter_path: str, slot: str) -> str:
    """The path of an optimizer variable of a parameter, as Keras 3's
    ``add_variable_from_reference`` names it: ``adam/dense_kernel_momentum``."""
    return f"{optimizer_name}/{parameter_path.replace('/', '_')}_{slot}"


def excluded_by_pattern(names: Iterable[str], patterns: Iterable[str], suffix: str = ":0") -> list[bool]:
    """Per parameter path, whether one of ``patterns`` (regular expressions, as Keras joins
    them with ``|``) is found in it. Keras on TensorFlow searches the ``tf.Variable`` name,
    the full path plus ``":0"`` (``suffix``), so ``"dense"`` also picks ``dense_1/kernel``."""
    joined = "|".join(sorted(set(patterns)))
    if not joined:
        return [False for _ in names]
    pattern = re.compile(joined)
    return [pattern.search(f"{name}{suffix}") is not None for name in names]
