"""Typed params sections, generated from workflow/schemas/params.schema.yaml by
`python -m featinv.config` (tests/test_config.py checks that it is current): do not edit.
Each class is an object of the schema, named by its key path in CamelCase; featinv.config's
sections() and typed() fill them from validated params."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping


@dataclass(frozen=True)
class Train:
    """The train section of params.yaml."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    max_grad_norm: float
    drop_prob: float
    lr_warmup_steps: int
    lr_schedule: Literal['constant', 'cosine']
    checkpoint_every: int
    seed: int
    mixed_precision: Literal['fp32', 'fp16', 'bf16']
    timesteps: Literal['uniform', 'cubic']
    snr_gamma: float
    loss: Literal['prediction', 'x0']
    augment: TrainAugment


@dataclass(frozen=True)
class TrainAugment:
    """Training views. none = one cached view per image (the image itself); views = every cached view (data.views); online = a random resized crop with flips drawn at every step, the backbone and the codec run on it (ControlNets only; the official code's RandomResizedCrop(288) + flips, paper overlay)."""

    mode: Literal['none', 'views', 'online']
    size: int
    scale: tuple[float, ...]
    ratio: tuple[float, ...]
    hflip: bool
    vflip: bool


@dataclass(frozen=True)
class Params:
    """One params file drives Snakemake and DVC. Validated before any job runs: an unknown key, a wrong type or a missing key stops the run with a message naming the key path."""

    data: Data
    backbones: Backbones
    features: Features
    diffusion: Diffusion
    controlnet: Controlnet
    sampling: Sampling
    metrics: Metrics
    modular: Modular
    modular_analyses: ModularAnalyses
    inverse: Inverse
    layers: Layers
    applications: Applications
    resources: Resources


@dataclass(frozen=True)
class Data:
    """The data section of params.yaml."""

    dataset: str
    source: Literal['demo', 'imagefolder', 'webdataset', 'coco']
    root: str
    splits: tuple[str, ...]
    per_class: Mapping[str, int | None]
    shard_maxcount: int
    views: DataViews
    demo: DataDemo
    coco: DataCoco


@dataclass(frozen=True)
class DataViews:
    """Augmented training views (the official code's random resized crops and flips, cached): each image of these splits becomes `count` rows, view 0 the image itself, the others square crops. Features and diffusion targets of every view are computed once."""

    splits: tuple[str, ...]
    count: int
    scale: tuple[float, ...]
    flip: bool
    seed: int


@dataclass(frozen=True)
class DataDemo:
    """The data.demo section of params.yaml."""

    image_size: int
    train_crops: int
    val_crops: int
    val_fraction: float
    seed: int
    photos: tuple[str, ...]


@dataclass(frozen=True)
class DataCoco:
    """The data.coco section of params.yaml."""

    annotations: str
    images: str


@dataclass(frozen=True)
class Backbones:
    """The backbones section of params.yaml."""

    names: tuple[str, ...]
    weights: Mapping[str, str]
    input_size: Mapping[str, int]


@dataclass(frozen=True)
class Features:
    """The features section of params.yaml."""

    splits: tuple[str, ...]
    batch_size: int
    num_workers: int
    device: str
    rows_per_shard: int
    rows_per_chunk: int
    topk: int
    view: Literal['eval_transform', 'resize']
    layer: Mapping[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class Diffusion:
    """The diffusion section of params.yaml."""

    prompt: str
    device: str
    base: DiffusionBase
    targets: DiffusionTargets


@dataclass(frozen=True)
class DiffusionBase:
    """The diffusion.base section of params.yaml."""

    source: str
    resolution: int
    patch: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_heads: int
    text_hidden: int
    text_layers: int
    prediction_type: Literal['epsilon', 'v_prediction', 'sample']
    beta_schedule: Literal['scaled_linear', 'linear', 'squaredcos_cap_v2']
    seed: int
    train: Train


@dataclass(frozen=True)
class DiffusionTargets:
    """The diffusion.targets section of params.yaml."""

    batch_size: int
    num_workers: int


@dataclass(frozen=True)
class Controlnet:
    """The controlnet section of params.yaml."""

    variants: tuple[Literal['unpooled', 'pooled'], ...]
    encoder: ControlnetEncoder
    train: Train


@dataclass(frozen=True)
class ControlnetEncoder:
    """The controlnet.encoder section of params.yaml."""

    hidden: int
    depth: int
    levels: int = 1
    zero_last: bool = True
    first_layer: Literal['direct', 'factored'] = 'direct'


@dataclass(frozen=True)
class Sampling:
    """The sampling section of params.yaml."""

    split: str
    scheduler: Literal['ddim', 'unipc', 'dpmsolver']
    steps: int
    guidance_scale: float
    hint_guidance: float
    control_strength: Mapping[str, float]
    tuning: Literal['fixed', 'auto']
    tune: SamplingTune
    samples_per_map: int
    seed: int
    batch_size: int
    precision: Literal['auto', 'fp32']
    rows_per_shard: int
    preview: int
    timestep_spacing: Literal['leading', 'trailing', 'linspace'] = 'leading'


@dataclass(frozen=True)
class SamplingTune:
    """The grid tune_sampling sweeps (used under tuning auto, or when its outputs are asked for)."""

    maps: int
    control_strength: tuple[float, ...]
    guidance_scale: tuple[float, ...]
    seed: int


@dataclass(frozen=True)
class Metrics:
    """The metrics section of params.yaml."""

    batch_size: int
    device: str
    bootstrap: int
    confidence: float
    seed: int
    cross_model_variant: Literal['unpooled', 'pooled']
    scoring: Literal['eval_transform', 'resize']
    oracles: MetricsOracles
    fid: MetricsFid


@dataclass(frozen=True)
class MetricsOracles:
    """Table 1's ceilings, scored like the reconstructions. oracle_copy (the original itself) is always computed."""

    nearest_train: bool


@dataclass(frozen=True)
class MetricsFid:
    """The metrics.fid section of params.yaml."""

    features: str
    inception_weights: str


@dataclass(frozen=True)
class Modular:
    """The modular section of params.yaml."""

    backbone: str
    groups: tuple[tuple[int, ...], ...]
    image_size: int | tuple[int, ...]
    fit: Literal['crop', 'resize']
    hidden: int
    depth: int
    heads: int
    steps: int
    batch_size: int
    lr: float
    lr_by_stage: Mapping[str, float]
    optimizer: Literal['adamw', 'adam']
    max_grad_norm: float
    val_every: int
    instances: int
    seed: int


@dataclass(frozen=True)
class ModularAnalyses:
    """The analyses of the trained inverses (changing these never retrains them)."""

    examples: int
    batch_size: int
    token_noise: ModularAnalysesTokenNoise
    finetune: ModularAnalysesFinetune
    detection: ModularAnalysesDetection
    attention: ModularAnalysesAttention


@dataclass(frozen=True)
class ModularAnalysesTokenNoise:
    """The modular_analyses.token_noise section of params.yaml."""

    stages: tuple[str, ...]
    fraction: float
    low: float
    high: float
    seed: int


@dataclass(frozen=True)
class ModularAnalysesFinetune:
    """The modular_analyses.finetune section of params.yaml."""

    stage: str
    lambdas: tuple[float, ...]
    steps: int
    lr: float


@dataclass(frozen=True)
class ModularAnalysesDetection:
    """DETR's detection errors (section 4.6; DETR backbones only)."""

    threshold: float
    iou: float


@dataclass(frozen=True)
class ModularAnalysesAttention:
    """ViT with self-attention among image tokens removed (section 4.5; ViT backbones only)."""

    steps: int
    lr: float


@dataclass(frozen=True)
class Inverse:
    """The deterministic inverse beside FeatInv (results/comparison/): a plain decoder trained with pixel MSE from a backbone's map to the same target view FeatInv's ControlNet learns (the classic inverse of the modular paper, applied to FeatInv's map), on the same train split and views."""

    hidden: int
    batch_size: int
    train: InverseTrain


@dataclass(frozen=True)
class InverseTrain:
    """The inverse.train section of params.yaml."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    max_grad_norm: float
    lr_warmup_steps: int
    lr_schedule: Literal['constant', 'cosine']
    checkpoint_every: int
    seed: int
    mixed_precision: Literal['fp32', 'fp16', 'bf16']
    views: Literal['none', 'views']


@dataclass(frozen=True)
class Layers:
    """The layer study (results/layers/): one backbone's unpooled FeatInv at an intermediate layer beside its last map, scored on each layer and on the last. backbone '' = off."""

    backbone: str
    layer: str
    preview: int


@dataclass(frozen=True)
class Applications:
    """The first paper's application figures, made with the unpooled FeatInv model of `backbone` on the sampling split."""

    backbone: str
    concepts: ApplicationsConcepts
    interpolation: ApplicationsInterpolation
    composition: ApplicationsComposition
    qualitative: ApplicationsQualitative


@dataclass(frozen=True)
class ApplicationsConcepts:
    """The applications.concepts section of params.yaml."""

    clustering: Literal['kmeans', 'ssc']
    class_name: str
    k: int
    variance: float
    factor: float
    threshold: float
    seeds: int
    images: int
    seed: int


@dataclass(frozen=True)
class ApplicationsInterpolation:
    """The applications.interpolation section of params.yaml."""

    pairs: tuple[tuple[int, ...], ...]
    alphas: tuple[float, ...]
    seed: int


@dataclass(frozen=True)
class ApplicationsComposition:
    """The applications.composition section of params.yaml."""

    pairs: tuple[tuple[int, ...], ...]
    box: tuple[float, ...]
    seed: int


@dataclass(frozen=True)
class ApplicationsQualitative:
    """The applications.qualitative section of params.yaml."""

    images: int
    samples: int
    seed: int


@dataclass(frozen=True)
class Resources:
    """What each job asks a cluster for; outputs never depend on it."""

    gpus: int
    mem_mb: Mapping[str, int]
    runtime: Mapping[str, int]
