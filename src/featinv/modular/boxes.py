"""DETR's outputs and COCO ground truth as boxes: boxes of instance masks, IoU, DETR's detections
and their greedy matching to objects, DETR's own training loss against such boxes, and COCO box AP
(pycocotools' ``COCOeval``, the maintained reference implementation).

Boxes are (x0, y0, x1, y1) in pixels of the fitted image (exclusive ends for mask boxes); DETR's
x_pred is (Q, C+1+4): class logits with no-object last, then boxes (cx, cy, w, h) in [0, 1].
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import torch

from featinv.modular.stages import ForwardModel


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixel box (exclusive ends) of a (H, W) bool mask; None if empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detections(x_pred: torch.Tensor, size: tuple[int, int], threshold: float) -> list[tuple[int, float, tuple]]:
    """One image's DETR output (Q, C+1+4: logits with no-object last, boxes cx, cy, w, h in [0, 1])
    as (label, score, (x0, y0, x1, y1) in pixels) for the queries scoring at least ``threshold``,
    best first (as transformers' ``post_process_object_detection``)."""
    probs = x_pred[:, :-4].softmax(-1)[:, :-1]
    scores, labels = probs.max(-1)
    h, w = size
    out = []
    for q in torch.nonzero(scores >= threshold).flatten().tolist():
        cx, cy, bw, bh = x_pred[q, -4:].tolist()
        out.append((int(labels[q]), float(scores[q]), ((cx - bw / 2) * w, (cy - bh / 2) * h,
                                                        (cx + bw / 2) * w, (cy + bh / 2) * h)))
    return sorted(out, key=lambda d: -d[1])


def match(objects: list[tuple[int, tuple]], found: list[tuple[int, float, tuple]], min_iou: float) -> list[bool]:
    """For each (category, box) object: matched by a detection of its category with IoU >= min_iou,
    each detection (best first) matching at most one object, the one it overlaps most."""
    detected = [False] * len(objects)
    for label, _, box in found:
        best, best_iou = None, min_iou
        for k, (category, obj_box) in enumerate(objects):
            if not detected[k] and category == label and (overlap := iou(box, obj_box)) >= best_iou:
                best, best_iou = k, overlap
        if best is not None:
            detected[best] = True
    return detected


def ground_truth(objects: list[tuple[int, torch.Tensor]]) -> list[tuple[int, tuple[int, int, int, int], int]]:
    """One image's (category, mask) objects as (category, mask box, mask area); empty masks dropped."""
    return [(c, b, int(m.sum())) for c, m in objects if (b := mask_box(m)) is not None]


def scored_detections(objects: list[list[tuple[int, torch.Tensor]]], x_pred: torch.Tensor,
                      size: tuple[int, int]) -> list[tuple[list, list]]:
    """Per image, (:func:`ground_truth` of its (category, mask) objects, :func:`detections` of its
    x_pred with every query's best class): what :func:`box_ap` scores, as COCO's DETR evaluation does."""
    return [(ground_truth(objs), detections(x, size, 0.0)) for objs, x in zip(objects, x_pred)]


def detr_targets(objects: list[tuple[int, tuple, int]], size: tuple[int, int], num_labels: int) -> dict[str, torch.Tensor]:
    """One image's :func:`ground_truth` as DETR's training labels: ``class_labels`` and ``boxes``
    (cx, cy, w, h in [0, 1] of the (H, W) ``size``)."""
    h, w = size
    for c, _, _ in objects:
        if not 0 <= c < num_labels:
            raise ValueError(f"object category {c} is not one of DETR's {num_labels} labels (0..{num_labels - 1})")
    boxes = [((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h) for _, (x0, y0, x1, y1), _ in objects]
    return {"class_labels": torch.tensor([c for c, _, _ in objects], dtype=torch.long),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}


def detr_loss(model: ForwardModel, x_pred: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """DETR's own training loss (Hungarian matching; class, L1 box and GIoU terms, weighted as
    ``model.config`` says) of x_pred (B, Q, C+1+4) against per-image :func:`detr_targets`: what
    ``DetrForObjectDetection(..., labels=targets).loss`` computes, without the auxiliary losses of
    the intermediate decoder layers (the stages give the last one)."""
    config = copy.copy(model.config)
    config.auxiliary_loss = False
    loss, _, _ = model.loss_function(x_pred[..., :-4], targets, x_pred.device, x_pred[..., -4:], config)
    return loss


def box_ap(images: list[tuple[list[tuple[int, tuple, int]], list[tuple[int, float, tuple]]]]) -> dict[str, float]:
    """COCO box AP over images, each (:func:`ground_truth`, :func:`detections`): ``AP`` (IoU 0.50:0.95),
    ``AP50``, ``AP75`` as pycocotools' ``COCOeval`` (at most 100 detections an image; categories
    without ground truth are not scored). NaN without ground-truth objects, 0 without detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for i, (objects, found) in enumerate(images, 1):
        for c, (x0, y0, x1, y1), area in objects:
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": area, "iscrowd": 0})
        for label, score, (x0, y0, x1, y1) in found:
            dets.append({"image_id": i, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    if not gt_anns:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(1, len(images) + 1)], "annotations": gt_anns,
                      "categories": [{"id": c} for c in sorted({a["category_id"] for a in gt_anns})]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2])}
