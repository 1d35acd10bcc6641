"""Looking inside a trained model: its conv layers and their filters, the output of every
stage for one image, a layer's outputs through a forward hook, and t-SNE of them.

The run report's figures (plots.py) draw what these return; nothing here draws or
writes a file. Every probe runs the model in eval mode without gradients.
"""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from mnistcnn.data.dataset import Data, prepare

# The layout is settled after 250 early-exaggeration + 250 further iterations; scikit-learn's
# default 1000 doubles the cost for a picture that barely changes.
TSNE_ITERATIONS = 500


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every conv layer in forward order with its qualified name; depthwise ones included."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def filter_tiles(conv: nn.Conv2d) -> tuple[np.ndarray, str]:
    """One [kh, kw] tile per output filter, and how the tiles were made (for the title)."""
    weight = conv.weight.detach().float().cpu().numpy()
    inputs = weight.shape[1]  # input channels each filter sees (1 for a depthwise conv)
    if inputs == 1:
        how = "depthwise: one tile per channel" if conv.groups > 1 else "one input channel"
        return weight[:, 0], how
    return weight.mean(axis=1), f"each tile the mean over the filter's {inputs} input channels"


@torch.inference_mode()
def stage_outputs(model: nn.Module, data: Data, index: int) -> list[tuple[str, np.ndarray]]:
    """The raw input image and the output of every conv/pool stage for one test image."""
    raw = data.test.images[index: index + 1]
    model.eval()
    x = prepare(raw, data.mean, data.std)
    out = [("input", raw[0].float().cpu().numpy())]
    for name, stage in model.features.named_children():
        x = stage(x)
        out.append((name, x[0].float().cpu().numpy()))
    return out


@torch.inference_mode()
def layer_outputs(model: nn.Module, layer: str, images: torch.Tensor, data: Data,
                  batch_size: int) -> np.ndarray:
    """Flattened outputs of the named module for uint8 images, in eval mode, batch by batch."""
    captured = []
    hook = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out.flatten(1).float().cpu()))
    model.eval()
    try:
        for chunk in images.split(batch_size):
            model(prepare(chunk, data.mean, data.std))
    finally:
        hook.remove()
    return torch.cat(captured).numpy()


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE  # ~1 s to import: only for runs that draw an embedding

    n, d = features.shape
    # Perplexity must stay below the number of points; PCA init needs two dimensions.
    model = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3),
                 init="pca" if d >= 2 else "random", max_iter=TSNE_ITERATIONS,
                 random_state=seed)
    # One OpenMP thread: on a shared 2-core machine two spinning threads ran 4x slower.
    with threadpool_limits(1):
        return model.fit_transform(features)
