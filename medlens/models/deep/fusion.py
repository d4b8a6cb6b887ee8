"""Inference-only rewrite of a network: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it folds into the
convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one layer less to
run, the same function within float rounding. :func:`fold_batchnorm` finds the pairs on the
network's torch.fx graph (a BatchNorm whose only input is a convolution used nowhere else) and
rewrites them in place in the module tree, so module names, hooks and Grad-CAM layers stay as
they were. The caller checks the outputs against the original network (see
:func:`medlens.inference.bundle.Bundle.load`). A network that torch.fx cannot trace keeps its
BatchNorms. Only for networks that will not be trained again.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv_batchnorm_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names that can be folded; [] when the graph cannot be traced."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception:  # noqa: BLE001 - any tracing failure: keep the network as it is
        return []
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), NORMS):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(str(source.target)), CONVS)
            and len(source.users) == 1
            and calls[str(source.target)] == calls[str(node.target)] == 1  # modules called once (not shared)
        ):
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batchnorm(net: nn.Module) -> int:
    """Fold each foldable BatchNorm of ``net`` (in eval mode) into its convolution, in place; the
    BatchNorm becomes an identity. Returns the number of folded pairs."""
    if net.training:
        raise ValueError("fold_batchnorm needs a network in eval mode")
    folded = 0
    for conv_name, norm_name in conv_batchnorm_pairs(net):
        conv, norm = net.get_submodule(conv_name), net.get_submodule(norm_name)
        if norm.running_mean is None or norm.running_var is None:  # batch statistics at eval: not an affine map
            continue
        fused = fuse_conv_bn_eval(conv, norm)  # type: ignore[arg-type]
        fused.requires_grad_(conv.weight.requires_grad)
        _replace(net, conv_name, fused)
        _replace(net, norm_name, nn.Identity())
        folded += 1
    return folded


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)
