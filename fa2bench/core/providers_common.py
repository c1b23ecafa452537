"""What the provider modules share: ``Unsupported``, the type of a provider's call, the variant parts a
provider may declare, and a shape's variant keywords. The registry (``fa2bench.core.providers``) imports this and
the modules of providers (``fa2bench.core.providers_torch``); none of them imports the registry, so imports run
one way. Imports no torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fa2bench.core import variants as _variants
from fa2bench.core.presets import Shape

if TYPE_CHECKING:  # the registry imports no torch: listing providers and drawing figures stay light
    import torch

AttnFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
ALL_VARIANT_PARTS = frozenset({"window", "softcap", "alibi", "docs"})


class Unsupported(Exception):
    """This provider cannot run this point; the message says why."""


def variant_kwargs(shape: Shape, device_name: str) -> dict:
    """The kernel keywords of the shape's variant (``variants.kernel_kwargs``); {} for dense attention."""
    if shape.variant == _variants.DENSE:
        return {}
    return _variants.kernel_kwargs(_variants.parse(shape.variant), shape.batch, shape.heads, shape.seqlen_q,
                                   device_name)
