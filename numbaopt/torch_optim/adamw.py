"""AdamW (torch.optim 2.13): Adam's update with decoupled weight decay, 1e-2 by default.

torch's ``AdamW`` is its ``Adam`` with ``decoupled_weight_decay=True`` (not an argument of
AdamW's, but a key of its param groups): ``p <- p * (1 - lr * weight_decay)`` before the
moments, then Adam's step (``numbaopt.torch_optim.adam``).
"""
from typing import Any

from numbaopt.torch_optim.adam import Adam, adam_rule
from numbaopt.torch_optim.base import Argument


class AdamW(Adam):
    """Adam with decoupled weight decay (torch's ``torch.optim.AdamW``)."""

    eight_bit_name = "AdamW8bit"

    arguments = (
        Argument("lr", 1e-3, "real"),
        Argument("betas", (0.9, 0.999), "pair"),
        Argument("eps", 1e-8, "real"),
        Argument("weight_decay", 1e-2, "real"),
        Argument("amsgrad", False, "flag"),
        Argument("maximize", False, "flag"),
        Argument("foreach", None, "optional_flag"),
        Argument("capturable", False, "refused"),
        Argument("differentiable", False, "refused"),
        Argument("fused", None, "refused"),
    )
    keyword_only = ("maximize", "foreach", "capturable", "differentiable", "fused")
    group_only = (Argument("decoupled_weight_decay", True, "flag"),)
    rule = staticmethod(adam_rule)

    @classmethod
    def bind_arguments(cls, args: tuple[Any, ...], kwargs: Any) -> dict[str, Any]:
        """AdamW's arguments, and the ``decoupled_weight_decay=True`` its param groups hold."""
        given = dict(kwargs)
        decoupled = given.pop("decoupled_weight_decay", True)  # a config (get_config's) holds it
        if decoupled is not True:
            raise ValueError("AdamW is Adam with decoupled_weight_decay=True; for another, use Adam")
        return {**super().bind_arguments(args, given), "decoupled_weight_decay": True}
