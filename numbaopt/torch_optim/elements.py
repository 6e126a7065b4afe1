"""The element arithmetic torch.optim's single-tensor steps share, in torch's order of
operations. The rules call these; the kernels compile them into each rule that does
(``numbaopt.kernels.helpers`` follows calls within a package)."""


def coupled(p: float, g: float, maximize: bool, weight_decay: float) -> float:
    """The gradient, negated for ``maximize``, then with the weight decay added (``g + wd * p``)."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def decayed(p: float, g: float, maximize: bool, weight_decay: float, decoupled: bool, decay: float) -> tuple[float, float]:
    """(p, g) after ``maximize`` and the weight decay: coupled into the gradient, or
    decoupled (AdamW's ``p * (1 - lr * wd)``, ``decay``)."""
    if decoupled and weight_decay != 0:
        return p * decay, -g if maximize else g
    return p, coupled(p, g, maximize, weight_decay)


def lerped(m: float, g: float, w: float, small: bool, w_complement: float) -> float:
    """``torch.lerp(m, g, w)`` as its kernels compute it: from ``m`` for a weight below
    one half (``small``), from ``g`` with ``1 - w`` (``w_complement``) otherwise."""
    return m + w * (g - m) if small else g - (g - m) * w_complement
