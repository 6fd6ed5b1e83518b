"""Memory of the training records as loader workers grow: one shared byte buffer (data.pack_records=true,
data/records.py PackedRecords) vs a Python list of Record objects.

A synthetic COCO-sized json (default 30,000 images x 7 polygon annotations, 10-40 vertices each, 80
classes; every image is one of 8 small PNG textures, file names repeating) is written once under the
bench folder. Then, for each storage in turn, one process tree is sampled every 0.2 s: PSS from
/proc/<pid>/smaps_rollup summed over the process and its loader workers (PSS splits a shared page
between the processes mapping it, so the sum is the memory the tree really costs), with the sum of RSS
(counts shared pages once per process) and the main process's USS (its private pages) for reference.
The worker columns are the mean over the 4 workers at the sample where the tree's PSS peaked; a worker's
USS is what it copied from its parent (copy-on-write) or allocated itself.

Default: the tree is `fromscratch train configs/models/cpu.yaml` (4 loader workers, small images, a few
iterations). --loader-only: the tree is a child of this script that loads the json as training does
(fromscratch.data.sources.load_dataset, then .packed() or not), builds the training loader
(data/loader.py TrainSet + train_loader, Mask R-CNN targets) with 4 workers and iterates --batches batches.
Usage: python benchmarks/memory.py [--images 30000] [--anns-per-image 7] [--workers 4] [--iterations 30]
       [--loader-only] [--batches 50]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, table, target, workdir  # noqa: E402

# The packed tree's peak PSS against the list's, 4 workers, 30,000 images: <= 0.65x with the loader alone (the
# records are most of what differs), <= 0.8x for a training process (its model, optimizer and activations,
# about 0.5 GB at the cpu preset, are the same in both and stay in the ratio).
GOAL_LOADER, GOAL_TRAIN = 0.65, 0.8
SIZES = [(640, 480), (480, 640)]  # landscape and portrait textures, 4 files each
TRAIN_OVERRIDES = ["data.val=null", "data.check_images=false", "data.train_scales=[96,128]",
                   "data.scale_sampling=range", "data.test_scale=112", "data.max_size=187",
                   "train.log_period=10", "train.threads=1"]


# ---------------------------------------------------------------------------------------- the data


def write_textures(root: Path, seed: int = 0) -> list[tuple[str, int, int]]:
    """8 PNGs (4 per orientation) of smooth random colour under root/images: (file name, width, height)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(8):
        w, h = SIZES[k % 2]
        name = f"images/tex{k}.png"
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        if not (root / name).exists():
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / name)
        out.append((name, w, h))
    return out


def _annotations(rng, image_ids: list[int], sizes: list[tuple[int, int]], per_image: int, first_id: int) -> list[dict]:
    import numpy as np

    n = len(image_ids) * per_image
    img_of = np.repeat(np.arange(len(image_ids)), per_image)
    W = np.array([sizes[i][0] for i in img_of], dtype=np.float64)
    H = np.array([sizes[i][1] for i in img_of], dtype=np.float64)
    rx, ry = rng.uniform(0.03, 0.25, n) * W, rng.uniform(0.03, 0.25, n) * H
    cx, cy = rng.uniform(rx, W - rx), rng.uniform(ry, H - ry)
    k = rng.integers(10, 41, n)  # vertices per polygon
    ends = np.cumsum(k)
    owner = np.repeat(np.arange(n), k)
    ang = rng.uniform(0, 2 * np.pi, int(ends[-1]))
    ang = ang[np.lexsort((ang, owner))]  # increasing within each polygon: a star-shaped outline
    rad = rng.uniform(0.7, 1.0, len(ang))
    x = np.clip(cx[owner] + rx[owner] * rad * np.cos(ang), 0, W[owner] - 1).round(2)
    y = np.clip(cy[owner] + ry[owner] * rad * np.sin(ang), 0, H[owner] - 1).round(2)
    xy = np.stack([x, y], axis=1).reshape(-1)
    cats = rng.integers(1, 81, n)
    anns = []
    for j, poly in enumerate(np.split(xy, 2 * ends[:-1])):
        px, py = poly[0::2], poly[1::2]
        x0, y0 = float(px.min()), float(py.min())
        w, h = max(float(px.max()) - x0, 1.0), max(float(py.max()) - y0, 1.0)
        anns.append({"id": first_id + j, "image_id": image_ids[img_of[j]], "category_id": int(cats[j]),
                     "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)], "area": round(0.7 * w * h, 2),
                     "iscrowd": 0, "segmentation": [poly.tolist()]})
    return anns


def make_json(folder: Path, images: int, per_image: int, seed: int = 0) -> Path:
    """The synthetic COCO json (cached by size): written in chunks, never whole in memory."""
    import numpy as np

    path = folder / f"synthetic_{images}x{per_image}.json"
    if path.exists():
        return path
    tex = write_textures(folder, seed)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(tex), images)
    imgs = [{"id": i + 1, "file_name": tex[p][0], "width": tex[p][1], "height": tex[p][2]} for i, p in enumerate(pick)]
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, 81)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "fromscratch benchmarks/memory.py synthetic COCO"}, "images": ')
        json.dump(imgs, f)
        f.write(', "categories": ')
        json.dump(cats, f)
        f.write(', "annotations": [')
        chunk = 2000
        for s in range(0, images, chunk):
            ids = [im["id"] for im in imgs[s:s + chunk]]
            sizes = [(im["width"], im["height"]) for im in imgs[s:s + chunk]]
            anns = _annotations(rng, ids, sizes, per_image, 1 + s * per_image)
            text = json.dumps(anns)[1:-1]
            if text:
                f.write(("," if s else "") + text)
        f.write("]}")
    tmp.rename(path)
    return path


# ------------------------------------------------------------------------------------- the sampler


def _mem(pid: int) -> dict[str, int] | None:
    """kB of Pss, Rss, Private_* from smaps_rollup (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    out = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key] = int(parts[0])
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


class TreeSampler:
    """Samples the process tree under ``pid`` every ``every`` seconds until stopped: per sample the time,
    the main process's PSS/USS/RSS and its descendants' (the loader workers') PSS/USS/RSS, in MB."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.samples: list[dict] = []
        self.first_child_s: float | None = None
        self._stop = threading.Event()
        self.start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tick = time.perf_counter()
            procs = [(p, _mem(p)) for p in _tree(self.pid)]
            procs = [(p, m) for p, m in procs if m]
            main = next((m for p, m in procs if p == self.pid), None)
            if main is not None:
                others = [m for p, m in procs if p != self.pid]
                if others and self.first_child_s is None:
                    self.first_child_s = tick - self.start
                uss = lambda m: m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
                self.samples.append({
                    "t": tick - self.start, "workers": len(others),
                    "pss": (main.get("Pss", 0) + sum(m.get("Pss", 0) for m in others)) / 1024,
                    "anon": (main.get("Pss_Anon", 0) + sum(m.get("Pss_Anon", 0) for m in others)) / 1024,
                    "rss": (main.get("Rss", 0) + sum(m.get("Rss", 0) for m in others)) / 1024,
                    "main_pss": main.get("Pss", 0) / 1024, "main_uss": uss(main) / 1024,
                    "worker_pss": [m.get("Pss", 0) / 1024 for m in others],
                    "worker_uss": [uss(m) / 1024 for m in others]})
            self._stop.wait(max(0.0, self.every - (time.perf_counter() - tick)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def summarize(samples: list[dict], workers: int) -> dict[str, float]:
    """Peaks over the samples with every worker alive (and before any worker: the load)."""
    full = [s for s in samples if s["workers"] >= workers] or [s for s in samples if s["workers"]]
    before = [s for s in samples if not s["workers"]]
    out = {"load_peak_pss": max((s["pss"] for s in before), default=float("nan"))}
    if not full:
        return out | {k: float("nan") for k in ("peak_pss", "anon", "main_pss", "worker_pss", "worker_uss",
                                                "peak_rss", "main_uss")}
    top = max(full, key=lambda s: s["pss"])
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return out | {"peak_pss": top["pss"], "anon": top["anon"], "main_pss": top["main_pss"],
                  "worker_pss": mean(top["worker_pss"]), "worker_uss": mean(top["worker_uss"]),
                  "peak_rss": max(s["rss"] for s in full),
                  "main_uss": max(s["main_uss"] for s in full)}


# ------------------------------------------------------------------------------------ the runs


def loader_child(args: argparse.Namespace) -> None:
    """--child: load the json as training does, pack it or not, iterate the training loader."""
    import torch

    from fromscratch.data.loader import TrainSet, train_loader
    from fromscratch.data.sources import load_dataset
    from fromscratch.data.transforms import TrainTransform

    torch.set_num_threads(1)
    tick = time.perf_counter()
    ds = load_dataset(args.json, check_images=False)
    if args.pack:
        ds = ds.packed()
    load_s = time.perf_counter() - tick
    transform = TrainTransform([96, 128], "range", 187, 0.5, None)
    loader = train_loader(ds, transform, args.batch_size, 0, 0, args.batches, with_masks=True, with_keypoints=False,
                          num_workers=args.workers)
    assert isinstance(loader.dataset, TrainSet)
    n = 0
    for images, _ in loader:
        n += len(images)
    print(json.dumps({"load_s": load_s, "images": n, "records": len(ds.records),
                      "packed_mb": ds.records.nbytes / 2**20 if args.pack else None}), flush=True)


def run_tree(cmd: list[str], workers: int, log: Path) -> tuple[dict[str, float], list[str], float | None]:
    """Run ``cmd`` sampling its tree; (summary, stdout lines, seconds to the training init line)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tick = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = TreeSampler(proc.pid)
    lines, init_s = [], None
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if init_s is None and "init: " in line:
            init_s = time.perf_counter() - tick
    rc = proc.wait()
    sampler.stop()
    log.write_text("\n".join(lines) + "\n")
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}):\n" + "\n".join(lines[-30:]))
    first = sampler.first_child_s if sampler.first_child_s is not None else float("nan")
    return summarize(sampler.samples, workers) | {"first_worker_s": first}, lines, init_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--anns-per-image", type=int, default=7)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=30, help="training iterations per run (default mode)")
    ap.add_argument("--config", default="configs/models/cpu.yaml")
    ap.add_argument("--loader-only", action="store_true", help="no training: load, pack or not, iterate the loader")
    ap.add_argument("--batches", type=int, default=50, help="--loader-only: batches iterated")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--pack", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        loader_child(args)
        return
    measure_and_print(args)


def measure_and_print(args: argparse.Namespace) -> None:
    """Both storages side by side (list first, then packed), one table and the target line."""
    folder = workdir("memory")
    tick = time.perf_counter()
    path = make_json(folder, args.images, args.anns_per_image)
    gen_s = time.perf_counter() - tick
    rows, res, packed_mb = [], {}, None
    warmup = max(1, min(5, (args.iterations - 1) // 2))  # shorter than the one LR drop, at the last iteration
    for pack in (False, True):
        name = "packed (one buffer)" if pack else "list of Records"
        if args.loader_only:
            cmd = [sys.executable, __file__, "--child", "--json", str(path), "--pack", str(int(pack)),
                   "--workers", str(args.workers), "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
            s, lines, _ = run_tree(cmd, args.workers, folder / f"loader_{int(pack)}.log")
            info = json.loads(next(ln for ln in reversed(lines) if ln.startswith("{")))
            load_s, start_s = info["load_s"], s["first_worker_s"]
            packed_mb = info["packed_mb"] or packed_mb
        else:
            out = folder / f"train_{int(pack)}"
            cmd = [sys.executable, "-m", "fromscratch", "train", args.config, f"data.train={path}",
                   f"data.num_workers={args.workers}", f"data.pack_records={str(pack).lower()}",
                   f"train.batch_size={args.batch_size}", f"train.iterations={args.iterations}",
                   f"train.steps=[{args.iterations - 1}]", f"train.warmup_iters={warmup}", *TRAIN_OVERRIDES,
                   f"output_dir={out}"]
            s, _, init_s = run_tree(cmd, args.workers, folder / f"train_{int(pack)}.log")
            load_s, start_s = init_s if init_s is not None else float("nan"), s["first_worker_s"]
        res[pack] = s
        rows.append([name, f"{load_s:.1f}", f"{start_s:.1f}", f"{s['peak_pss']:.0f}", f"{s['anon']:.0f}",
                     f"{s['main_pss']:.0f}", f"{s['worker_pss']:.0f}", f"{s['worker_uss']:.0f}",
                     f"{s['peak_rss']:.0f}", f"{s['main_uss']:.0f}",
                     f"{s['load_peak_pss']:.0f}"])
    ratio = res[True]["peak_pss"] / res[False]["peak_pss"]
    mode = (f"loader only: load_dataset + TrainSet/train_loader, {args.batches} batches of {args.batch_size}"
            if args.loader_only else f"`fromscratch train {args.config}`, {args.iterations} iterations, batch "
                                     f"{args.batch_size}, warmup {warmup}, {' '.join(TRAIN_OVERRIDES)}")
    print(f"## Records memory with {args.workers} loader workers: packed vs list\n")
    load = ("load_dataset (+ packing)" if args.loader_only else
            "start to the trainer's init line (data and model built)")
    print(f"Synthetic COCO json: {args.images} images x {args.anns_per_image} polygon annotations "
          f"({path.stat().st_size / 2**20:.0f} MB, {'cached' if gen_s < 1 else f'written in {gen_s:.0f} s'}); "
          f"{mode}{f' (packed records: {packed_mb:.0f} MB)' if packed_mb else ''}. "
          f"Memory of the process tree (main + workers) sampled every 0.2 s, MB. Load s: {load}; "
          f"workers at s: start to the first worker seen. Anon: PSS of anonymous pages only (the records are "
          f"anonymous memory; file pages, such as torch's libraries, are shared with every process that maps them). "
          f"Worker columns: at the sample where the tree's PSS peaked. Main USS: its peak. {machine()}.\n")
    print(table(["storage", "load s", "workers at s", f"peak PSS sum, {args.workers} workers", "of which anon",
                 "main PSS", "worker PSS (mean)", "worker USS (mean)", "peak RSS sum", "main USS",
                 "peak PSS before workers"], rows))
    print()
    why = ("about no difference: with few images the records are small; at full size, check that "
           "data.pack_records reaches data/build.py (and compare --loader-only)" if ratio > 0.95 else "")
    name = f"peak memory with {args.workers} workers, packed vs list{' (loader only)' if args.loader_only else ''}"
    print(target(name, ratio, GOAL_LOADER if args.loader_only else GOAL_TRAIN, higher=False, why=why))


if __name__ == "__main__":
    main()
