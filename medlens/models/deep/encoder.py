"""A registered classifier seen as an encoder: the network up to its classification head.

The head is the network's last linear layer in module order (``fc`` of a ResNet, ``head.fc`` of
``cnn-small``, ``vit.classification_head.0``, ``_fc`` of EfficientNet, ``fc`` of the CNN-LSTM);
its input is what the network knows about an image. The out-of-distribution guard reads its
features there, and self-supervised pretraining (:mod:`medlens.training.pretrain`) trains
everything before it.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from medlens.errors import MedlensError


def head_name(net: nn.Module) -> str:
    """Dotted name of the network's classification head (its last linear layer)."""
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise MedlensError(f"{type(net).__name__} has no linear layer: no classification head to find")
    return linears[-1]


def head_keys(net: nn.Module) -> list[str]:
    """State-dict keys of the head (its weight and bias)."""
    prefix = head_name(net) + "."
    return [k for k in net.state_dict() if k.startswith(prefix)]


def remove_head(net: nn.Module) -> int:
    """Replace the head by an identity (in place), so that ``net(x)`` returns the head's input
    features (N, D); returns D."""
    name = head_name(net)
    head = net.get_submodule(name)
    assert isinstance(head, nn.Linear)
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, nn.Identity())
    return int(head.in_features)


class WithFeatures(nn.Module):
    """``net`` answering (logits, the head's input flattened to (N, D)) in one forward pass: the
    two outputs of the exported inference graph (:mod:`medlens.inference.graph`)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._seen: list[Any] = []
        net.get_submodule(head_name(net)).register_forward_pre_hook(lambda _m, inputs: self._seen.append(inputs[0]))

    def forward(self, x: Any) -> tuple[Any, Any]:
        self._seen.clear()
        logits = self.net(x)
        return logits, self._seen[-1].flatten(1)


def output_keys(model: str, *, in_channels: int, spatial_dims: int, img_size: Any) -> list[str]:
    """State-dict keys of registry network ``model`` whose shapes depend on its number of outputs
    (a classifier's head; a segmentation network's output layer): found by building it twice."""
    from medlens.models.registry import get_model

    def shapes(n: int) -> dict[str, Sequence[int]]:
        net = get_model(model).build(
            in_channels=in_channels, num_outputs=n, spatial_dims=spatial_dims, img_size=img_size
        )
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}

    two, three = shapes(2), shapes(3)
    return [k for k in two if two[k] != three.get(k)]
