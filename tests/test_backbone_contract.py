"""The built-in backbones keep the Backbone context contract (``lrag_framework.testing``): the
engine's native run equals an independent sliding-window loop, determinism, batch independence,
a reusable prepared context, padding and context order that change nothing."""
import pytest
import torch

from lrag_framework.plugins import load_plugins
from lrag_framework.testing import check_backbone

SMALL_TINY = {"height": 16, "width": 16, "patch": 4, "dim": 32, "layers": 2, "heads": 2,
              "weights": None, "window": 6}
SMALL_WAN = {"random_init": True, "window": 6, "sink": 1, "num_layers": 2, "dim": 32,
             "num_heads": 2, "ffn_dim": 48, "freq_dim": 16, "text_dim": 24, "text_len": 8,
             "latent_channels": 4, "latent_height": 4, "latent_width": 6}


def prompt(seed: int) -> torch.Tensor:
    return torch.randn(5, 24, generator=torch.Generator().manual_seed(seed))


def test_tiny_keeps_the_backbone_contract():
    check_backbone(lambda: load_plugins().build("backbone", "tiny", SMALL_TINY))


def test_tiny_with_its_shipped_weights_keeps_the_backbone_contract():
    params = {"window": 6}  # the shipped world model at its own size
    check_backbone(lambda: load_plugins().build("backbone", "tiny", params),
                   items=[{"world": 3, "path": "revisit"}, {"world": 4, "path": "revisit"}],
                   rtol=1e-4)


@pytest.mark.parametrize("name", ["self_forcing", "causal_forcing", "causvid", "longlive"])
def test_wan_keeps_the_backbone_contract(name):
    check_backbone(lambda: load_plugins().build("backbone", name, SMALL_WAN),
                   items=[prompt(0), prompt(1)], rtol=1e-4)


def test_frame_signals_that_depend_on_the_frames_asked_are_caught():
    """A conditioning whose signal rows are numbered by their place in the request, not by
    frame, breaks the contract a conditioned key relies on."""
    class Numbered:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def frame_signals(self, frames):
            return torch.arange(len(frames), dtype=torch.float32).expand(2, -1)[..., None]

    def make():
        bb = load_plugins().build("backbone", "tiny", SMALL_TINY)
        encode = bb.encode_conditioning
        bb.encode_conditioning = lambda items, n: Numbered(encode(items, n))
        return bb

    with pytest.raises(AssertionError, match="depends on the other frames asked"):
        check_backbone(make)
