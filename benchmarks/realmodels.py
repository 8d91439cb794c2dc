"""Real trained models: does graphprune keep them working? Four models shipped inside PyPI packages, pruned
without retraining, each scored on its own task against the unpruned model.

- rapidocr-onnxruntime 1.4.4 (PP-OCR exported from Paddle; every weight is a Constant node):
  - cls: text orientation classifier (ch_ppocr_mobile_v2.0_cls, input [N,3,48,192]); metric: agreement with
    the unpruned model on upright and 180-degree-flipped text lines.
  - rec: PP-OCRv4 recogniser (input [N,3,48,320], CTC over the 6623-character dictionary stored in the
    model's metadata, greedy decoding); metric: lines decoded identically, character accuracy.
  - det: PP-OCRv4 DB text detector (input [N,3,320,320]); metric: IoU of the text map (probability > 0.3,
    rapidocr's threshold) with the unpruned model's.
- nudenet 3.4.2: a YOLOv8n detector exported by ultralytics (320n.onnx, input `images` [N,3,320,320] in
  [0,1]); metric: relative output error, and detection agreement after NMS.

The data is built from what is installed (benchmarks/realdata.py): Pillow-rendered text lines with known
strings, pasted onto crops of scikit-learn's sample photos for the detector. Calibration and evaluation
samples are disjoint (different seeds). Nothing is downloaded at run time: the .onnx files are found inside
the installed packages, which are benchmark data, never runtime dependencies:

    make bench-setup        # pip install --no-deps rapidocr-onnxruntime==1.4.4 nudenet==3.4.2 pillow
    python benchmarks/realmodels.py            # writes benchmarks/results/realmodels.md (+ .json)
    python benchmarks/realmodels.py --quick    # fewer samples and rows
    python benchmarks/realmodels.py --models cls,rec
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import realdata  # noqa: E402
from benchmarks.results_io import cpu_name, kept_section, save_raw  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SETUP = "pip install --no-deps rapidocr-onnxruntime==1.4.4 nudenet==3.4.2 pillow (make bench-setup)"
THREADS = 2

# model name -> (module, file inside the package, input name, input shape of one sample)
MODELS = {
    "cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "x", (3, 48, 192)),
    "rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "x", (3, 48, 320)),
    "det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", "x", (3, 320, 320)),
    "yolo": ("nudenet", "320n.onnx", "images", (3, 320, 320)),
}
TITLES = {"cls": "rapidocr text orientation classifier (PP-OCR mobile v2.0 cls)",
          "rec": "rapidocr PP-OCRv4 text recogniser", "det": "rapidocr PP-OCRv4 text detector (DB)",
          "yolo": "nudenet YOLOv8n detector (320n.onnx)"}


def model_file(name: str) -> Path | None:
    """The .onnx file of a model inside its installed package (found without importing the package, whose
    own imports need opencv), or None when the package is not installed."""
    module, rel, _, _ = MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    return path if path.is_file() else None


# ---- running a model -------------------------------------------------------------------------------
def session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run(model, x: np.ndarray, input_name: str, batch: int = 16) -> np.ndarray:
    """The first output over all samples, in batches."""
    sess = session(model)
    return np.concatenate([sess.run(None, {input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def macs(model: onnx.ModelProto, input_name: str, shape) -> int:
    """MACs of one sample, counted the same way for every tool's output (analysis/costs.py)."""
    import graphprune.analysis.rules  # noqa: F401 - registers the MAC formulas; costs.py alone counts 0 MACs
    from graphprune.analysis.costs import model_stats
    from graphprune.core.graph import GraphView

    return model_stats(model, GraphView(model, {input_name: [1, *shape]})).macs


# ---- preprocessing (as rapidocr / nudenet do it) ----------------------------------------------------
def _paddle_norm(img: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3] -> float32 BGR [3,H,W] in [-1, 1] (PaddleOCR reads images with OpenCV, in BGR)."""
    return (img[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5) / 0.5


def _line_tensor(img: np.ndarray, height: int, width: int, squeeze: bool) -> np.ndarray | None:
    """rapidocr's resize_norm_img: height fixed, aspect kept, zero padding on the right. A line wider than
    `width` is squeezed to it (the classifier) or refused (None: the recogniser, whose batch width would grow)."""
    h, w = img.shape[:2]
    new_w = int(np.ceil(height * w / h))
    if new_w > width:
        if not squeeze:
            return None
        new_w = width
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :new_w] = _paddle_norm(realdata._resize(img, new_w, height))
    return out


# ---- metrics, one per model ------------------------------------------------------------------------
def ctc_greedy(probs: np.ndarray, charset: list[str]) -> list[str]:
    """CTC greedy decoding: best class per step, repeats merged, blanks (index 0) dropped."""
    best = probs.argmax(-1)
    out = []
    for seq in best:
        keep = np.ones(len(seq), dtype=bool)
        keep[1:] = seq[1:] != seq[:-1]
        keep &= seq != 0
        out.append("".join(charset[i] for i in seq[keep]))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def rec_metric(decoded: list[str], truth: list[str], reference: list[str]) -> dict:
    """Lines decoded exactly as the ground truth and as the unpruned model; character accuracy
    (1 - edit distance / length, over all lines, 0 when the decodes are longer garbage) against the ground truth."""
    dist = sum(edit_distance(d, t) for d, t in zip(decoded, truth))
    return {"lines_exact": float(np.mean([d == t for d, t in zip(decoded, truth)])),
            "char_acc": max(0.0, 1.0 - dist / max(sum(len(t) for t in truth), 1)),
            "lines_same": float(np.mean([d == r for d, r in zip(decoded, reference)]))}


def det_metric(prob: np.ndarray, ref_prob: np.ndarray, thresh: float = 0.3) -> dict:
    """IoU of the text map (probability > thresh) with the unpruned model's, over all evaluation pixels."""
    a, b = prob > thresh, ref_prob > thresh
    union = int((a | b).sum())
    return {"map_iou": float((a & b).sum() / union) if union else 1.0, "text_px": float(a.mean())}


def cls_metric(probs: np.ndarray, ref_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Agreement of the predicted orientation with the unpruned model's, and accuracy against the truth."""
    pred = probs.argmax(-1)
    return {"agreement": float((pred == ref_probs.argmax(-1)).mean()), "accuracy": float((pred == labels).mean())}


def yolo_boxes(out: np.ndarray, conf: float, iou: float) -> list[np.ndarray]:
    """Detections of a YOLOv8 output [N, 4 + classes, anchors] (cx, cy, w, h, class scores), per image
    [k, 6] (x1, y1, x2, y2, score, class), after class-agnostic NMS (as nudenet does)."""
    dets = []
    for pred in out:
        pred = pred.T
        scores, cls = pred[:, 4:].max(1), pred[:, 4:].argmax(1)
        keep = scores >= conf
        xywh, scores, cls = pred[keep, :4], scores[keep], cls[keep]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        chosen = nms(boxes, scores, iou)
        dets.append(np.concatenate([boxes[chosen], scores[chosen, None], cls[chosen, None]], 1))
    return dets


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [n, 4] with every box of b [m, 4] (x1, y1, x2, y2)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order, keep = np.argsort(-scores, kind="stable"), []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(i)
        order = order[box_iou(boxes[i:i + 1], boxes[order])[0] < iou]
    return np.array(keep, dtype=np.int64)


def match(got: np.ndarray, ref: np.ndarray, iou: float = 0.5) -> int:
    """Reference detections matched one-to-one by a detection of the same class at IoU >= iou (greedy, best
    reference score first)."""
    if not len(got) or not len(ref):
        return 0
    ious = box_iou(ref[:, :4], got[:, :4])
    ious[ref[:, 5][:, None] != got[:, 5][None, :]] = 0
    used, n = set(), 0
    for r in np.argsort(-ref[:, 4], kind="stable"):
        for g in np.argsort(-ious[r], kind="stable"):
            if ious[r, g] < iou:
                break
            if g not in used:
                used.add(g)
                n += 1
                break
    return n


def yolo_metric(out: np.ndarray, ref: np.ndarray, conf: float, iou: float = 0.45) -> dict:
    """Relative output error (of the whole output, which box coordinates in pixels dominate, and of the class
    scores alone), and detection agreement after NMS: 2 x matched / (reference + pruned
    detections), matched at IoU >= 0.5 with the same class."""
    from graphprune.core.compare import relative_error

    got_d, ref_d = yolo_boxes(out, conf, iou), yolo_boxes(ref, conf, iou)
    matched = sum(match(g, r) for g, r in zip(got_d, ref_d))
    n_got, n_ref = sum(len(d) for d in got_d), sum(len(d) for d in ref_d)
    return {"rel_error": relative_error(ref, out), "score_rel_error": relative_error(ref[:, 4:], out[:, 4:]),
            "det_agreement": 2 * matched / (n_got + n_ref) if n_got + n_ref else 1.0,
            "detections": n_got, "matched": matched}


# ---- tasks -----------------------------------------------------------------------------------------
@dataclass
class Task:
    """One model with its calibration samples, evaluation samples and metric."""

    name: str
    path: Path
    input_name: str
    shape: tuple
    calib: np.ndarray
    x: np.ndarray
    score: object  # model -> dict of metrics against the unpruned model
    columns: list  # (metric key, column title, format)
    base: dict = field(default_factory=dict)  # the unpruned model's metrics (against the truth where there is one)
    data: str = ""

    def bars(self, row: dict) -> list[tuple[str, str, bool]]:
        return BARS[self.name](row, self.base)


def _charset(model: onnx.ModelProto) -> list[str]:
    """The recogniser's dictionary (metadata 'character', one per line) with CTC blank first, space last,
    as rapidocr's CTCLabelDecode builds it."""
    meta = {p.key: p.value for p in model.metadata_props}
    return ["blank", *meta["character"].splitlines(), " "]


def _fitting_lines(n: int, seed: int, alphabet: set, height: int, width: int, squeeze: bool):
    """n rendered lines (strings, tensors) that fit the input width."""
    texts, tensors, k = [], [], 0
    while len(texts) < n:
        batch = realdata.text_lines(2 * n, seed=seed + 1000 * k, alphabet=alphabet)
        for t, img in zip(batch, realdata.line_images(batch, seed=seed + 1000 * k)):
            x = _line_tensor(img, height, width, squeeze)
            if x is not None and len(texts) < n:
                texts.append(t)
                tensors.append(x)
        k += 1
    return texts, np.stack(tensors)


def task_rec(n_calib: int, n_eval: int) -> Task:
    path = model_file("rec")
    charset = _charset(onnx.load(str(path), load_external_data=False))
    alphabet = set(charset[1:])
    _, calib = _fitting_lines(n_calib, 11, alphabet, 48, 320, squeeze=False)
    truth, x = _fitting_lines(n_eval, 22, alphabet, 48, 320, squeeze=False)
    ref = ctc_greedy(run(path, x, "x"), charset)

    def score(model):
        return rec_metric(ctc_greedy(run(model, x, "x"), charset), truth, ref)

    base = rec_metric(ref, truth, ref)
    return Task("rec", path, "x", (3, 48, 320), calib, x, score,
                [("lines_same", "lines as unpruned", ".3f"), ("lines_exact", "lines exact", ".3f"),
                 ("char_acc", "char acc", ".4f")], base,
                f"{n_eval} rendered lines (1-3 words, at most 16 characters, {len(realdata.font_names())} fonts), "
                f"{n_calib} others for calibration")


def task_cls(n_calib: int, n_eval: int) -> Task:
    path = model_file("cls")

    def lines(n, seed):
        imgs = realdata.line_images(realdata.text_lines(n, seed=seed), seed=seed)
        imgs += [np.ascontiguousarray(im[::-1, ::-1]) for im in imgs]  # upright, then turned by 180 degrees
        return np.stack([_line_tensor(im, 48, 192, squeeze=True) for im in imgs]), np.repeat([0, 1], n)

    calib, _ = lines(max(1, n_calib // 2), 33)
    x, labels = lines(n_eval // 2, 44)
    ref = run(path, x, "x")

    def score(model):
        return cls_metric(run(model, x, "x"), ref, labels)

    return Task("cls", path, "x", (3, 48, 192), np.ascontiguousarray(calib), np.ascontiguousarray(x), score,
                [("agreement", "agreement", ".3f"), ("accuracy", "accuracy", ".3f")], cls_metric(ref, ref, labels),
                f"{n_eval // 2} rendered lines upright and flipped by 180 degrees ({len(x)} images), "
                f"{len(calib)} others for calibration")


def task_det(n_calib: int, n_eval: int) -> Task:
    path = model_file("det")

    def scenes(n, seed):
        imgs, masks, _ = realdata.text_scenes(n, 320, seed=seed)
        return np.stack([_paddle_norm(im) for im in imgs]), masks

    calib, _ = scenes(n_calib, 55)
    x, masks = scenes(n_eval, 66)
    ref = run(path, x, "x", batch=8)

    def score(model):
        return det_metric(run(model, x, "x", batch=8), ref)

    gt = det_metric(masks[:, None].astype(np.float32), ref)  # the unpruned map against the pasted labels
    return Task("det", path, "x", (3, 320, 320), calib, x, score,
                [("map_iou", "text-map IoU", ".4f")], {"map_iou_vs_labels": gt["map_iou"], "text_px": gt["text_px"]},
                f"{n_eval} photo crops (320x320) with 1-4 text labels pasted on, {n_calib} others for calibration")


# nudenet's own score threshold is 0.2; on these photos (no people) the unpruned model scores nothing that
# high, so detections are taken from 0.02 on: low-confidence boxes, a fragile but measurable agreement.
YOLO_CONF = 0.02


def task_yolo(n_calib: int, n_eval: int) -> Task:
    path = model_file("yolo")
    calib = realdata.photo_crops(n_calib, 320, seed=77).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    x = realdata.photo_crops(n_eval, 320, seed=88).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    ref = run(path, x, "images", batch=8)

    def score(model):
        return yolo_metric(run(model, x, "images", batch=8), ref, YOLO_CONF)

    return Task("yolo", path, "images", (3, 320, 320), calib, x, score,
                [("rel_error", "rel. output error", ".4f"), ("score_rel_error", "rel. score error", ".4f"),
                 ("det_agreement", "detection agreement", ".3f")],
                yolo_metric(ref, ref, YOLO_CONF),
                f"{n_eval} photo crops (320x320), {n_calib} others for calibration; detections: class score >= "
                f"{YOLO_CONF} (nudenet uses 0.2, above which the unpruned model finds nothing in these photos), "
                "class-agnostic NMS at IoU 0.45")


TASKS = {"cls": task_cls, "rec": task_rec, "det": task_det, "yolo": task_yolo}


# ---- the bars (30% of the MACs removed, with calibration, held-out samples) -------------------------
def _macs_bar(row):
    got = 1.0 - row["macs_kept"]
    return ("MACs removed within ±2 points of 30%", f"{got:.1%}", abs(got - 0.3) <= 0.02 + 1e-9)


BARS = {
    "det": lambda r, b: [("text-map IoU >= 0.90", f"{r['metrics']['map_iou']:.3f}", r["metrics"]["map_iou"] >= 0.9)],
    "rec": lambda r, b: [
        (">= 90% of lines decoded as unpruned", f"{r['metrics']['lines_same']:.1%}", r["metrics"]["lines_same"] >= 0.9),
        (f"char accuracy within 2 points of unpruned {b['char_acc']:.4f}", f"{r['metrics']['char_acc']:.4f}",
         r["metrics"]["char_acc"] >= b["char_acc"] - 0.02)],
    "cls": lambda r, b: [("agreement >= 0.95", f"{r['metrics']['agreement']:.3f}", r["metrics"]["agreement"] >= 0.95)],
    "yolo": lambda r, b: [("relative output error <= 0.03", f"{r['metrics']['rel_error']:.4f}",
                           r["metrics"]["rel_error"] <= 0.03)],
}


# ---- rows ------------------------------------------------------------------------------------------
# (ratio, label, prune() keywords, calibrated). Calibrated prunes cost minutes each on 2 cores (statistics and
# layer-by-layer compensation), so the grid is the settings the bars are about plus the cheap data-free ones.
ROWS = (
    (0.3, "defaults", {}, False),
    (0.3, "global", {"global_pruning": True}, False),
    (0.3, "defaults", {}, True),
    (0.3, "global", {"global_pruning": True}, True),
    (0.5, "defaults", {}, False),
    (0.5, "global", {"global_pruning": True}, False),
    (0.5, "defaults", {}, True),
)
QUICK_ROWS = (ROWS[0], ROWS[2], ROWS[3])
LIFTED = (0.3, "defaults, weights as initializers", {}, True)  # --lifted: the diagnostic row
# (calibration, evaluation) samples per model. A calibrated prune's time grows with the samples (statistics,
# and compensation runs the model once per wave of layers): minutes per row for rec/det/yolo on 2 cores.
SAMPLES = {"cls": (32, 64), "rec": (16, 64), "det": (16, 64), "yolo": (16, 64)}
QUICK_SAMPLES = (8, 32)


def lift_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every Constant node's tensor moved into an initializer of the same name: the diagnostic
    for exports that keep their weights in Constant nodes (what graphprune would do if it read them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            out.graph.initializer.append(t)
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _weight_dims(model: onnx.ModelProto) -> dict[str, tuple[str, list]]:
    """Conv/Gemm/MatMul output name -> (op, weight dims), the weight an initializer or a Constant node."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    dims[node.output[0]] = list(a.t.dims)
    out = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in dims:
            out[node.output[0]] = (node, dims[node.input[1]])
    return out


def _in_features(node, w) -> int:
    if node.op_type == "Conv":
        return w[1] * next((a.i for a in node.attribute if a.name == "group"), 1)
    if node.op_type == "Gemm" and next((a.i for a in node.attribute if a.name == "transB"), 0):
        return w[1]
    return w[-2] if len(w) >= 2 else w[0]


def cut_inputs(original: onnx.ModelProto, pruned: onnx.ModelProto) -> list[str]:
    """Linear layers (by output name) that read fewer input channels after pruning: the ones whose outputs
    change and that compensation is for."""
    before, after = _weight_dims(original), _weight_dims(pruned)
    return [y for y, (node, w) in after.items() if y in before
            and _in_features(node, w) < _in_features(*before[y]) and (node.op_type != "Conv" or w[1] > 1)]


def _frozen_summary(report) -> list[str]:
    reasons = Counter(r for g in report.groups_frozen for r in g["reasons"][:1])
    return [f"{n} x {why}" for why, n in reasons.most_common(3)]


def graphprune_row(task: Task, original: onnx.ModelProto, base_macs: int, label: str, kw: dict, calibrated: bool,
                   ratio: float) -> dict:
    import graphprune

    args = dict(ratio=ratio, target="macs", input_shapes={task.input_name: [1, *task.shape]}, **kw)
    if calibrated:
        args["calib"] = {task.input_name: task.calib}
    row = {"tool": "graphprune", "setting": label, "calib": calibrated, "ratio": ratio}
    t = time.perf_counter()
    try:
        res = graphprune.prune(original, **args)
    except Exception as exc:  # noqa: BLE001 - a failure is a row of the results, not a crash of the benchmark
        return row | {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                      "time_s": time.perf_counter() - t}
    row["time_s"] = time.perf_counter() - t
    q, rep = res.report.quality, res.report
    comp = q.get("compensation", {})
    cut = cut_inputs(original, res.model)
    done = set(comp.get("layers", {}))
    row |= {"macs_kept": macs(res.model, task.input_name, task.shape) / base_macs,
            "report_macs_kept": rep.ratio("macs"), "params_kept": rep.ratio("params"),
            "importance": q.get("scoring", {}).get("importance", "?"),
            "compensation": comp.get("mode", "none"), "compensated": len(done),
            "cut_layers": len(cut), "cut_not_compensated": len([y for y in cut if y not in done]),
            "allocation": q.get("allocation", {}).get("mode", "?"),
            "allocation_note": q.get("allocation", {}).get("note", ""),
            "allocation_achieved": q.get("allocation", {}).get("achieved"),
            "groups": rep.groups_total, "groups_pruned": rep.groups_pruned, "frozen": len(rep.groups_frozen),
            "frozen_reasons": _frozen_summary(rep), "compensation_notes": comp.get("notes", [])[:3]}
    row["metrics"] = task.score(res.model)
    return row


# ---- onnxsim 0.8.1 ---------------------------------------------------------------------------------
def _closest(make, target_kept: float, measure, steps: int):
    """Bisect a sparsity knob in [0, 0.99] for the MACs kept closest to target_kept; (model, kept, knob)."""
    lo, hi = 0.0, 0.99
    model = make(hi)
    best = (model, measure(model), hi)
    if best[1] > 0.999:  # removes nothing even at the highest sparsity: no search
        return best
    for _ in range(steps - 1):
        mid = (lo + hi) / 2
        model = make(mid)
        kept = measure(model)
        if abs(kept - target_kept) < abs(best[1] - target_kept):
            best = (model, kept, mid)
        lo, hi = (mid, hi) if kept > target_kept else (lo, mid)
    return best


def onnxsim_rows(task: Task, original: onnx.ModelProto, base_macs: int, ratio: float, steps: int) -> list[dict]:
    """onnxsim 0.8.1: apply_structured_pruning (L2), alone and followed by correct_bias, and
    apply_structured_wanda_pruning + correct_bias, each with its sparsity bisected to the MAC target."""
    try:
        import onnxsim
    except ImportError:
        return []
    batches = [{task.input_name: task.calib[i:i + 8]} for i in range(0, len(task.calib), 8)]

    def measure(m):
        return macs(m, task.input_name, task.shape) / base_macs

    def quiet(fn):
        def call(s):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(s)
        return call

    variants = (
        ("l2", quiet(lambda s: onnxsim.apply_structured_pruning(original, sparsity=s))),
        ("wanda", quiet(lambda s: onnxsim.apply_structured_wanda_pruning(original, calibration_data=batches,
                                                                          sparsity=s))),
    )
    rows = []
    for score, make in variants:
        t = time.perf_counter()
        row = {"tool": "onnxsim 0.8.1", "setting": score, "calib": score == "wanda", "ratio": ratio}
        try:
            pruned, kept, knob = _closest(make, 1.0 - ratio, measure, steps)
        except Exception as exc:  # noqa: BLE001 - an anchor that fails is a row, not a crash
            rows.append(row | {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                               "time_s": time.perf_counter() - t})
            continue
        search = time.perf_counter() - t
        fixes = (False, True) if score == "l2" else (True,)
        for correct in fixes:
            t = time.perf_counter()
            r = dict(row, compensation="correct_bias" if correct else "none", knob=knob, macs_kept=kept,
                     calib=row["calib"] or correct)
            try:
                model = quiet(lambda _: onnxsim.correct_bias(original, pruned, calibration_data=batches))(0) \
                    if correct else pruned
                r["metrics"] = task.score(model)
            except Exception as exc:  # noqa: BLE001
                r["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            r["time_s"] = search + time.perf_counter() - t
            rows.append(r)
    return rows


# ---- one model -------------------------------------------------------------------------------------
def run_model(name: str, quick: bool, onnxsim: bool, lifted: bool, log, n_calib: int | None = None) -> dict:
    n_calib, n_eval = (n_calib or (QUICK_SAMPLES if quick else SAMPLES[name])[0],
                       (QUICK_SAMPLES if quick else SAMPLES[name])[1])
    t0 = time.perf_counter()
    task = TASKS[name](n_calib, n_eval)
    original = onnx.load(str(task.path))
    base_macs = macs(original, task.input_name, task.shape)
    log(f"{name}: {base_macs / 1e6:.1f} M MACs per sample, unpruned {task.base} (data {time.perf_counter() - t0:.0f} s)")
    grid = list(QUICK_ROWS if quick else ROWS)
    has_constants = any(n.op_type == "Constant" for n in original.graph.node)
    if lifted and has_constants:
        grid.append(LIFTED)
    rows = []
    for ratio in sorted({r[0] for r in grid}):
        for _, label, kw, calibrated in [r for r in grid if r[0] == ratio]:
            model = lift_constants(original) if label == LIFTED[1] else original
            row = graphprune_row(task, model, base_macs, label, kw, calibrated, ratio)
            rows.append(row)
            log(f"  {ratio} {label}{' calib' if calibrated else ''}: " + _brief(row, task))
        if onnxsim:
            for row in onnxsim_rows(task, original, base_macs, ratio, steps=5 if quick else 7):
                rows.append(row)
                log(f"  {ratio} onnxsim {row['setting']}/{row.get('compensation', '-')}: " + _brief(row, task))
    for row in rows:
        if row["ratio"] == 0.3 and row["calib"] and "metrics" in row and row["tool"] == "graphprune":
            row["bars"] = [list(b) for b in task.bars(row)] + [list(_macs_bar(row))]
    return {"model": name, "title": TITLES[name], "file": f"{MODELS[name][0]}/{MODELS[name][1]}",
            "samples": {"calibration": len(task.calib), "evaluation": len(task.x)},
            "input": f"{task.input_name} [N,{','.join(map(str, task.shape))}]", "macs": base_macs,
            "constant_weights": sum(n.op_type == "Constant" for n in original.graph.node),
            "initializers": len(original.graph.initializer), "base": task.base, "data": task.data,
            "columns": task.columns, "rows": rows, "time_s": time.perf_counter() - t0}


def _brief(row, task) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    m = ", ".join(f"{k} {row['metrics'][k]:{f}}" for k, _, f in task.columns)
    return f"MACs kept {row['macs_kept']:.3f}, {m} ({row['time_s']:.1f} s)"


# ---- report ----------------------------------------------------------------------------------------
def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _why(row) -> str:
    """What the report says was not done, for a row whose bars are missed."""
    parts = []
    if row.get("allocation_note"):
        parts.append(row["allocation_note"])
    elif abs(1 - row["macs_kept"] - row["ratio"]) > 0.02:
        parts.append(f"allocation removed {1 - row['macs_kept']:.1%} of the MACs for a target of {row['ratio']:.0%}, "
                     f"without a note (its own count: {row['allocation_achieved']})")
    if row.get("calib") and row.get("importance") not in ("reconstruction", "wanda", "fluctuation", "dead"):
        parts.append(f"scores: {row['importance']} (not data-aware)")
    if row.get("cut_not_compensated"):
        parts.append(f"{row['cut_not_compensated']} of {row['cut_layers']} layers reading removed channels not "
                     f"compensated (compensation touched {row['compensated']} layers)")
    if row.get("frozen"):
        parts.append(f"{row['frozen']} of {row['groups']} groups frozen ({'; '.join(row['frozen_reasons'])})")
    return "; ".join(parts)


def markdown(results: list[dict], meta: dict, out: Path) -> str:
    lines = ["# Real trained models", "",
             f"Generated by `python benchmarks/realmodels.py{' --quick' if meta['quick'] else ''}"
             f"{' --lifted' if meta.get('lifted') else ''}` ({meta['when']}, "
             f"{meta['cpu']}, {THREADS} ONNX Runtime threads, load average {meta['load']}; total {meta['total_s']:.0f} s). "
             "Every row prunes the model as shipped in its package (no retraining) with `--target macs`; nothing is "
             "downloaded. Calibration and evaluation samples are disjoint. MACs kept: per sample at the benchmark's "
             "input shape, counted by graphprune's cost model for every tool's output. Time: the whole prune "
             "(graphprune: analysis, calibration statistics, scoring, rewrite, compensation, validation, fidelity; "
             "onnxsim: its sparsity search, the pruning calls and correct_bias).", "",
             f"Data: photos from {meta['data']['photos']}; words ({meta['data']['words']}) from "
             f"{', '.join(meta['data']['text'])}; fonts: {', '.join(meta['data']['fonts'])}.",
             f"onnxsim: {meta['onnxsim']}.", ""]
    lines += ["## Bars", "",
              "At `--target macs --ratio 0.3` with `--calib` (graphprune rows), on the held-out samples.", "",
              "| model | setting | bar | measured | met |", "|---|---|---|---|---|"]
    misses = []
    for res in results:
        for row in res["rows"]:
            for bar, got, ok in row.get("bars", []):
                lines.append(f"| {res['model']} | {row['setting']} + calib | {bar} | {got} | {'yes' if ok else 'no'} |")
            if row.get("bars") and not all(ok for _, _, ok in row["bars"]):
                misses.append(f"- **{res['model']}, {row['setting']} + calib**: {_why(row) or 'nothing reported'}.")
    lines += [""]
    if misses:
        lines += ["What the report says about each row with a missed bar (allocation notes, the scores used, "
                  "layers compensation did not reach, frozen groups):", "", *misses, ""]
    lines += [kept_section(out, "notes"), ""]
    for res in results:
        base = "; ".join(f"{label} {res['base'][k]:{f}}" for k, label, f in BASE_SHOWN[res["model"]] if k in res["base"])
        lines += [f"## {res['model']}: {res['title']}", "",
                  f"`{res['file']}`, input {res['input']}, {res['macs'] / 1e6:.1f} M MACs per sample; "
                  f"{res['constant_weights']} Constant nodes, {res['initializers']} initializers. Data: {res['data']}. "
                  f"Unpruned: {base}. Model time (data, all rows): {res['time_s']:.0f} s.", ""]
        for ratio in sorted({r["ratio"] for r in res["rows"]}):
            lines += [f"### `--target macs --ratio {ratio}`", "", *_table(res, [r for r in res["rows"] if r["ratio"] == ratio]),
                      ""]
        notes = sorted({r["allocation_note"] for r in res["rows"] if r.get("allocation_note")})
        frozen = sorted({why for r in res["rows"] for why in r.get("frozen_reasons", [])})
        if notes or frozen:
            lines += [*(f"- allocation: {n}" for n in notes), *(f"- frozen: {f}" for f in frozen), ""]
    return "\n".join(lines) + "\n"


# the unpruned model's own numbers worth quoting (its agreement with itself is 1 by construction)
BASE_SHOWN = {"cls": [("accuracy", "orientation accuracy", ".3f")],
              "rec": [("lines_exact", "lines decoded exactly as the ground truth", ".3f"),
                      ("char_acc", "character accuracy", ".4f")],
              "det": [("map_iou_vs_labels", "text-map IoU with the pasted labels' boxes (context only: DB maps are "
                       "shrunk text regions)", ".3f")],
              "yolo": [("detections", "detections in the evaluation crops", "d")]}


def _onnxsim_note(r) -> str:
    kept = r["macs_kept"]
    if kept >= 1.0 - 1e-9:
        return ", removes nothing at any sparsity"
    if kept > 1.0 - r["ratio"] + 0.02:
        return f", removes at most {1 - kept:.2%} of the MACs"
    return ""


def _table(res: dict, rows: list[dict]) -> list[str]:
    cols = res["columns"]
    out = ["| tool | setting | calib | MACs kept (asked) | " + " | ".join(c[1] for c in cols)
           + " | scores | compensated (cut layers not compensated) | frozen groups | time (s) |",
           "|---|---|---|---|" + "---|" * len(cols) + "---|---|---|---|"]
    for r in rows:
        asked = f"{1 - r['ratio']:.2f}"
        if "error" in r:
            out.append(f"| {r['tool']} | {r['setting']} | {'yes' if r['calib'] else 'no'} | - ({asked}) | "
                       + " | ".join("-" for _ in cols) + f" | failed: {r['error']} | | | {_fmt(r.get('time_s'), '.1f')} |")
            continue
        metrics = " | ".join(_fmt(r["metrics"].get(k), f) for k, _, f in cols)
        if r["tool"] == "graphprune":
            comp = f"{r['compensation']}: {r['compensated']} ({r['cut_not_compensated']} of {r['cut_layers']})"
            extra = f"{r['importance']} | {comp} | {r['frozen']} of {r['groups']}"
        else:
            extra = f"{r['setting']} (sparsity {r['knob']:.2f}{_onnxsim_note(r)}) | {r['compensation']} | -"
        out.append(f"| {r['tool']} | {r['setting']} | {'yes' if r['calib'] else 'no'} | "
                   f"{r['macs_kept']:.3f} ({asked}) | {metrics} | {extra} | {r['time_s']:.1f} |")
    return out


def _onnxsim_status() -> str:
    try:
        import onnxsim
    except ImportError:
        return "not importable (it is in the bench extra: pip install -e '.[bench]'); its rows are missing"
    have = [f for f in ("apply_structured_pruning", "apply_structured_wanda_pruning", "correct_bias")
            if hasattr(onnxsim, f)]
    return f"{getattr(onnxsim, '__version__', '?')} ({', '.join(have)})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SAMPLES[0]} calibration / {QUICK_SAMPLES[1]} "
                   "evaluation samples, ratio 0.3 only, three graphprune settings")
    p.add_argument("--no-onnxsim", action="store_true", help="skip the onnxsim rows")
    p.add_argument("--lifted", action="store_true", help="add a diagnostic row per model whose weights are Constant "
                   "nodes: the same model with them moved to initializers (slow: its compensation does run)")
    p.add_argument("--calib-samples", type=int, default=None, metavar="N",
                   help="calibration samples for every model (default: " + ", ".join(f"{k} {v[0]}" for k, v in
                                                                               SAMPLES.items()) + ")")
    p.add_argument("--merge", action="store_true", help="keep the other models' results from the existing .json")
    p.add_argument("--out", default=str(RESULTS / "realmodels.md"))
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.write_text(markdown(saved["results"], saved["meta"], out))
        return 0
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    missing = [n for n in names if model_file(n) is None]
    if missing:
        raise SystemExit(f"models {', '.join(missing)} not found: their packages are not installed; {SETUP}")

    def log(msg):
        print(msg, flush=True)

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results = []
    for n in names:
        results.append(run_model(n, args.quick, not args.no_onnxsim, args.lifted, log, args.calib_samples))
        save_raw(out.with_suffix(".partial.json"), {"results": results})  # a crash keeps the models done so far
    meta = {"when": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "quick": args.quick, "data": realdata.describe(),
            "load": f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
            "total_s": time.perf_counter() - t0, "onnxsim": _onnxsim_status() if not args.no_onnxsim else "skipped",
            "lifted": args.lifted}
    if args.merge and out.with_suffix(".json").is_file():  # the other models' rows from the earlier run
        old = json.loads(out.with_suffix(".json").read_text())
        order = list(MODELS)
        results = [r for r in old["results"] if r["model"] not in names] + results
        results.sort(key=lambda r: order.index(r["model"]))
        meta["partial"] = f"{', '.join(names)} rerun; the others from the run of {old['meta']['when']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    out.write_text(markdown(results, meta, out))  # after the .json: --render redoes it from there
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    log(f"wrote {out} in {meta['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
