"""Writes examples/quickstart.ipynb (its cells live here, reviewable as code). Run it, then execute
the notebook after the README's main job to fill its outputs:
    python examples/make_quickstart.py && jupyter nbconvert --to notebook --execute --inplace examples/quickstart.ipynb
(or with nbclient, as tests/test_notebook.py does)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# FeatInv quickstart

After the README's main job (`snakemake --cores all results/table1.csv`), this notebook loads the
demo's FeatInv models for `tf_efficientnet_lite0`, reconstructs val images from their feature maps,
edits a map (composition), interpolates two maps, and scores the reconstructions with Table 1's
measures. Every image comes from `FeatInvPipeline`, the code `featinv sample` runs."""),
    ("code", """import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from featinv import FeatInvPipeline
from featinv.data.shards import index_split, read_image

# The project root (the notebook lives in examples/); the test suite points it at small fixture models.
ROOT = Path(os.environ.get("FEATINV_QUICKSTART_ROOT", "..")).resolve()
MODELS = ROOT / "data" / "models" / "demo" / "controlnet"
unpooled = FeatInvPipeline.from_pretrained(MODELS / "tf_efficientnet_lite0-unpooled", device="cpu")
pooled = FeatInvPipeline.from_pretrained(MODELS / "tf_efficientnet_lite0-pooled", device="cpu")
print(unpooled.meta["backbone"], unpooled.meta["fmap_shape"], unpooled.meta["steps"], "steps")"""),
    ("md", "## Three val images: original | reconstruction from the spatial map | from the pooled vector"),
    ("code", """val = index_split(ROOT / "data" / "shards" / "demo", "val", views=False)
picks = [val[i] for i in (12, 40, 95)] if len(val) > 95 else val[:3]  # the demo split has 136
originals = [read_image(entry) for entry in picks]
maps = unpooled.features(originals)                     # (3, 1280, 7, 7)
recon = unpooled(feature_maps=maps, seed=0).images
recon_pooled = pooled(images=originals, seed=0).images


def show(rows, titles):
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(2 * len(rows[0]), 2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r][c].imshow(image.resize((128, 128)) if hasattr(image, "resize") else image)
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=9)
    plt.tight_layout()
    plt.show()


show([[o.resize((128, 128)), a, b] for o, a, b in zip(originals, recon, recon_pooled)],
     ["original", "unpooled", "pooled"])"""),
    ("md", "## Composition: silence the left half of a map"),
    ("code", """edited = maps.clone()
edited[..., : maps.shape[-1] // 2] = 0
halved = unpooled(feature_maps=edited, seed=0).images
show([[a, b] for a, b in zip(recon, halved)], ["whole map", "left half zeroed"])"""),
    ("md", "## Interpolation between two maps"),
    ("code", """alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
mixed = torch.stack([(1 - a) * maps[0] + a * maps[1] for a in alphas])
steps = unpooled(feature_maps=mixed, generator=[torch.Generator().manual_seed(0) for _ in alphas]).images
show([steps], [f"alpha {a}" for a in alphas])"""),
    ("md", """## Scores: Table 1's measures per image
`cosine_sim`: the backbone's map of the reconstruction against the original's, cosine per spatial
position, averaged; `mismatched`: the same reconstruction against another image's original."""),
    ("code", """own = unpooled.score(recon, originals)
other = unpooled.score(recon, originals[1:] + originals[:1])
own_pooled = unpooled.score(recon_pooled, originals)
for i in range(len(originals)):
    print(f"image {i}: unpooled {own['cosine_sim'][i]:.3f} (mismatched {other['cosine_sim'][i]:.3f}), "
          f"pooled {own_pooled['cosine_sim'][i]:.3f}, top-5 match {bool(own['top5_match'][i])}")"""),
]


def notebook() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})


if __name__ == "__main__":
    nbformat.write(notebook(), Path(__file__).with_name("quickstart.ipynb"))
