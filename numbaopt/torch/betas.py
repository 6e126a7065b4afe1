"""torch's ``betas`` beside Keras's ``beta_1`` and ``beta_2`` in a param group.

torch's schedulers cycle momentum through ``group["betas"]`` (``OneCycleLR``, ``CyclicLR``);
Keras's classes step with ``beta_1`` and ``beta_2``. A group keeps both, equal: a write to
either since the last step is the new value, and the other follows.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: torch's name for the pair (beta_1, beta_2) in a param group.
BETAS = "betas"

_KERAS = ("beta_1", "beta_2")


def join_betas(group: dict[str, Any], defaults: Mapping[str, Any], check: Callable[[str, Any], Any], where: str) -> None:
    """Make a new ``group``'s ``betas`` and ``beta_1``, ``beta_2`` agree: those given win
    (``check``-ed), the others come from ``defaults``; given both ways and different, a
    ValueError naming them."""
    if BETAS in group:
        betas = tuple(group[BETAS])
        if len(betas) != 2:
            raise ValueError(f"{where}: betas must be a pair (beta_1, beta_2), got {group[BETAS]!r}")
        given = tuple(group.get(key, beta) for key, beta in zip(_KERAS, betas))
        if given != betas:
            raise ValueError(f"{where}: betas={betas} but beta_1={given[0]}, beta_2={given[1]}; give one of them")
        group["beta_1"], group["beta_2"] = (check(key, beta) for key, beta in zip(_KERAS, betas))
        group[BETAS] = betas
    elif "beta_1" in group or "beta_2" in group:
        group[BETAS] = tuple(group.get(key, defaults[key]) for key in _KERAS)


def sync_betas(group: dict[str, Any], seen: tuple[Any, Any], k: int) -> tuple[Any, Any]:
    """Honour a write to group ``k``'s ``betas`` (a scheduler's) or to its ``beta_1`` or
    ``beta_2`` since the last step (when they were ``seen``), making the other agree;
    writes to both that disagree raise ValueError naming them. Returns the pair now."""
    pair, betas = (group["beta_1"], group["beta_2"]), tuple(group[BETAS])
    if betas != pair:
        if betas == seen:  # beta_1 or beta_2 written
            group[BETAS] = pair
        elif pair == seen:  # betas written: it is the new value
            group["beta_1"], group["beta_2"] = pair = betas[0], betas[1]
        else:
            raise ValueError(
                f"param group {k}: betas was set to {betas} and beta_1, beta_2 to {pair}; "
                "set either betas or beta_1 and beta_2"
            )
    return pair
