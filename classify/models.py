"""The classifier network: a torchvision backbone with a new head, and its freezing rules.

Only ``nn.Module`` code lives here. :class:`ClassifierNet` takes the toolkit's
preprocessed images, (B, 1, S, S) in [-1, 1], repeats the grayscale channel three
times and applies ImageNet's mean and standard deviation itself, so every caller
(training, prediction, Grad-CAM) feeds it the same tensors.

The head is global average pooling (the backbone's own) -> dropout -> dense -> classes:
the backbone's final ``nn.Linear`` is replaced by ``Dropout`` + ``Linear``, which works
for any torchvision classifier (ResNet ``fc``, DenseNet ``classifier``, VGG and
EfficientNet ``classifier[-1]``, Inception ``fc`` ...).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

from anomaly.io import display_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_AUXILIARY_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")  # inception_v3, googlenet


class WeightsUnavailable(ValueError):
    """Pretrained weights cannot be had (offline, or a file that does not fit)."""


def classification_backbones() -> list[str]:
    """Names of torchvision's image classifiers (valid ``--backbone`` values)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _backbone_kwargs(backbone: str, pretrained: bool) -> dict:
    if backbone in ("inception_v3", "googlenet"):  # no auxiliary heads: one output
        return {"aux_logits": False} if pretrained else {"aux_logits": False,
                                                          "init_weights": True}
    return {}


def _find_head(net: nn.Module) -> str:
    """Dotted name of the backbone's final classifier ``nn.Linear``."""
    linears = [name for name, module in net.named_modules()
               if isinstance(module, nn.Linear) and not name.startswith(_AUXILIARY_PREFIXES)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no final nn.Linear classifier to replace")
    return linears[-1]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _imagenet_backbone(backbone: str) -> nn.Module:
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    try:
        return torchvision.models.get_model(backbone, weights=weights,
                                            **_backbone_kwargs(backbone, True))
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        reason = str(getattr(err, "reason", "") or err).splitlines()[0][:120]
        raise WeightsUnavailable(
            f"ImageNet weights for {backbone} are not in the torch cache "
            f"({torch.hub.get_dir()}) and cannot be downloaded ({reason}); use --weights none, "
            "or --weights PATH to a local state-dict file") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``); accepts ``{"state_dict": ...}``.

    Raises:
        WeightsUnavailable: missing, unsafe or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"{display_path(path)}: no weights file there (--weights takes "
                                 "imagenet, none or a state-dict file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsUnavailable(f"{display_path(path)}: refused, it holds pickled objects "
                                 "that could run code; save model.state_dict() instead") from None
    except Exception as err:
        raise WeightsUnavailable(f"{display_path(path)}: not a readable weights file "
                                 f"({type(err).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{display_path(path)}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_base_weights(net: nn.Module, state: dict[str, torch.Tensor], head: str,
                       source: str) -> None:
    """Load a backbone state dict; the classifier head may differ in shape or be absent."""
    own = net.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith(head + ".") and k in own and v.shape != own[k].shape)
             and not k.startswith(_AUXILIARY_PREFIXES)}
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head + ".")]
    if missing or result.unexpected_keys:
        raise WeightsUnavailable(
            f"{source}: does not fit {type(net).__name__} ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(result.unexpected_keys)} unexpected, e.g. "
            f"{result.unexpected_keys[:2]})")
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise WeightsUnavailable(f"{source}: tensor shapes do not fit, e.g. {wrong[0]}")


def _last_block_names(net: nn.Module, head: str) -> list[str]:
    """The last convolutional block and what follows it before the head.

    The last child holding two or more convolutions, and what follows it: ``layer4`` for
    ResNets, ``Mixed_7c`` for Inception, ``features.denseblock4`` and ``features.norm5``
    for DenseNets, the last stage of ``features`` and its 1x1 convolution for
    EfficientNet and MobileNet, the last stage for ConvNeXt. A flat ``features`` of single
    layers (VGG): the convolutions after its last pooling but one (its last stage).
    """
    features = getattr(net, "features", None)
    container, prefix = (features, "features.") if isinstance(features, nn.Sequential) else (net, "")
    children = [(prefix + name, module) for name, module in container.named_children()
                if module is not None]
    convs = [sum(isinstance(m, nn.Conv2d) for m in module.modules()) for _, module in children]
    if not any(convs):
        raise ValueError(f"{type(net).__name__}: no convolutional block found")
    if any(count >= 2 for count in convs):
        start = max(i for i, count in enumerate(convs) if count >= 2)
    else:  # one layer per child: the stage that ends in the last convolution
        last_conv = max(i for i, count in enumerate(convs) if count)
        pools = [i for i, (_, module) in enumerate(children[:last_conv])
                 if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d))]
        start = pools[-1] + 1 if pools else 0
    return [name for name, module in children[start:]
            if name != head and not head.startswith(name + ".")
            and any(True for _ in module.parameters())]


class ClassifierNet(nn.Module):
    """A torchvision classifier on grayscale X-rays, with freezing for transfer learning.

    Args:
        backbone: torchvision classifier name (``resnet50``, ``densenet169`` ...).
        num_classes: output classes.
        dropout: dropout before the new dense layer.
        weights: ``"imagenet"``, ``None`` (random initialisation) or a state-dict file.

    Raises:
        ValueError: unknown backbone.
        WeightsUnavailable: ImageNet weights cannot be downloaded, or the file does not fit.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 2, dropout: float = 0.3,
                 weights: str | os.PathLike | None = None):
        super().__init__()
        if backbone not in classification_backbones():
            raise ValueError(f"unknown backbone {backbone!r}; choose a torchvision classifier "
                             f"such as resnet50, densenet169, vgg16, efficientnet_b0, "
                             "inception_v3")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, not {num_classes}")
        self.backbone_name = backbone
        if weights == "imagenet":
            net = _imagenet_backbone(backbone)
        else:
            net = torchvision.models.get_model(backbone, weights=None,
                                               **_backbone_kwargs(backbone, False))
        self.head_name = _find_head(net)
        if weights not in (None, "imagenet"):
            _load_base_weights(net, load_state_dict_file(weights), self.head_name,
                               display_path(weights))
        old: nn.Linear = net.get_submodule(self.head_name)
        _set_submodule(net, self.head_name,
                       nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, num_classes)))
        self.net = net
        self.last_block_names = _last_block_names(net, self.head_name)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of (B, 1, S, S) images in [-1, 1]."""
        rgb = ((images + 1.0) * 0.5).expand(-1, 3, -1, -1)
        return self.net((rgb - self.mean) / self.std)

    @property
    def head(self) -> nn.Module:
        """The new dropout + dense head."""
        return self.net.get_submodule(self.head_name)

    @property
    def last_block(self) -> nn.Module:
        """The last convolutional block (Grad-CAM's target layer is its last module)."""
        return self.net.get_submodule(self.last_block_names[0])

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose output Grad-CAM explains: the end of the last block."""
        return self.net.get_submodule(self.last_block_names[-1])

    def freeze_base(self) -> None:
        """Train only the head: the backbone's parameters stop requiring gradients."""
        self.net.requires_grad_(False)
        self.head.requires_grad_(True)
        self.train(self.training)

    def unfreeze_last_block(self) -> None:
        """Also train the last block (``layer4`` for ResNets) for fine-tuning."""
        for name in self.last_block_names:
            self.net.get_submodule(name).requires_grad_(True)
        self.train(self.training)

    def unfreeze_all(self) -> None:
        """Train every parameter (random initialisation)."""
        self.net.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> ClassifierNet:
        """Set training mode, keeping BatchNorm layers of frozen parts in eval mode.

        Frozen BatchNorm layers keep using (and never update) their running statistics.
        """
        super().train(mode)
        if mode:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that currently require gradients."""
        return [p for p in self.parameters() if p.requires_grad]
