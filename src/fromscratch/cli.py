"""`fromscratch` command line: parse, call, print. Imports are lazy so `--help` does not load torch.

A ``FromScratchError`` (bad data, bad config) is printed as a plain message, exit 2; any other
exception is a bug in fromscratch and keeps its traceback with a line asking to report it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from pathlib import Path

EMBEDDED = ("trees", "fashion-mnist", "fashion-scenes")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.base_lr=0.04")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fromscratch", description="Train detectors from scratch vs pre-trained "
                                 "(He, Girshick, Dollar 2018) on your own data.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cfg = sub.add_parser("config", help="config files").add_subparsers(dest="sub", required=True)
    _add_config_args(cfg.add_parser("show", help="print the resolved config"))
    _add_data_parsers(sub)
    _add_run_parsers(sub)
    _add_study_parsers(sub)
    val = sub.add_parser("validate", help="check a dataset and list every problem (exit 1 if any)")
    val.add_argument("dataset", help="COCO json, VOC folder or VOC ImageSets .txt")
    val.add_argument("--image-root", help="folder the file names are relative to (default: the json's folder)")
    val.add_argument("--no-images", action="store_true", help="skip opening the image files")
    val.add_argument("--allow-outside-root", action="store_true")
    return ap


def _add_data_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="sub", required=True)
    prep = data.add_parser("prepare", help="prepare an embedded dataset under data/")
    prep.add_argument("name", choices=EMBEDDED)
    prep.add_argument("--out", default="data", help="parent folder (default: data)")
    prep.add_argument("--num-train", type=int, default=1000, help="fashion-scenes: training scenes")
    prep.add_argument("--num-val", type=int, default=200, help="fashion-scenes: validation scenes")
    prep.add_argument("--image-size", type=int, default=256, help="fashion-scenes: side of a scene in px")
    prep.add_argument("--seed", type=int, default=0)
    show = data.add_parser("show", help="draw images with their annotations into one grid PNG")
    show.add_argument("dataset", help="COCO json, VOC folder or ImageSets .txt")
    show.add_argument("--n", type=int, default=16, help="how many images (a seeded choice)")
    show.add_argument("--ids", type=int, nargs="*", help="these image ids instead")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--cols", type=int, default=4)
    show.add_argument("--out", required=True, help="output PNG")
    sub_p = data.add_parser("subset", help="write a seeded image-id list (nested across sizes)")
    sub_p.add_argument("dataset", help="COCO json")
    sub_p.add_argument("--size", type=int, required=True)
    sub_p.add_argument("--seed", type=int, default=0)
    sub_p.add_argument("--out", help="output file (default: <dataset dir>/subsets/<name>_<size>_seed<seed>.json)")


def _add_run_parsers(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="models").add_subparsers(dest="sub", required=True)
    show = model.add_parser("show", help="parameters, norm layers by kind, frozen parameters, FLOPs")
    _add_config_args(show)
    show.add_argument("--size", type=int, default=None, help="image side for the FLOPs count (default: test_scale)")
    show.add_argument("--num-classes", type=int, default=80)

    tr = sub.add_parser("train", help="train a detector (one run = one folder)")
    _add_config_args(tr)
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint of output_dir")
    tr.add_argument("--slurm", action="store_true", help="submit the run as a SLURM job (settings: the config's "
                    "slurm block; submitit), after checking the config and data here; the job resumes after a "
                    "requeue")
    tr.add_argument("--nproc", type=int, default=1,
                    help="processes on this machine (torchrun, gloo on CPU, NCCL on GPUs), the batch split between "
                         "them; on CPU each gets cores/nproc threads (pays on a busy machine, not on a quiet one: "
                         "README, Performance)")
    ev = sub.add_parser("eval", help="COCO AP of a checkpoint on data.val")
    _add_config_args(ev)
    ev.add_argument("--weights", required=True, help="a checkpoint (model_*.pth) or a model state dict")
    ev.add_argument("--out", help="folder for detections.json and metrics.json (default: output_dir/eval)")
    pr = sub.add_parser("predict", help="detections drawn on images (files or folders) + COCO results json")
    pr.add_argument("config")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--weights", required=True)
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--score-thresh", type=float, default=0.5)
    pr.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides, e.g. data.test_scale=800")
    xp = sub.add_parser("export", help="a trained detector as one ONNX or TorchScript file (boxes, labels, "
                        "scores, masks, keypoints)", description="Export a checkpoint as one file that runs without "
                        "fromscratch. Input: ONE image, float32 (3, H, W), RGB, values in [0, 1] (uint8 / 255), any "
                        "height and width (resized to data.test_scale inside). Outputs, in the input's pixels: "
                        "boxes (N, 4) x0 y0 x1 y1, labels (N,) 1-based, scores (N,); Mask R-CNN: masks (N, 1, H, W) "
                        "probabilities; Keypoint R-CNN: keypoints (N, K, 3), keypoints_scores (N, K). Class names "
                        "and these details are written to FILE.json. Traced (torch.jit.trace; ONNX: the "
                        "TorchScript-based exporter, opset 17); test-time augmentation is not exported.")
    xp.add_argument("checkpoint", help="a run folder's model_*.pth (its config.yaml is read), or weights with --config")
    xp.add_argument("overrides", nargs="*", help="config overrides, e.g. model.roi.score_thresh=0.3 "
                    "data.test_scale=800 (baked into the file)")
    xp.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    xp.add_argument("--out", help="output file (default: beside the checkpoint, model_N.onnx or "
                    "model_N.torchscript.pt)")
    xp.add_argument("--config", help="the model's config (default: config.yaml beside the checkpoint)")
    xp.add_argument("--no-check", action="store_true", help="skip running the file once against PyTorch on two "
                    "image sizes (ONNX: needs onnxruntime, pip install 'fromscratch[export]')")
    sc = sub.add_parser("schedule", help="print the schedule plan: iterations as epochs and as Nx, LR drops, "
                        "warm-up, samples (length: train.epochs, else train.iterations, else train.schedule)")
    _add_config_args(sc)
    sc.add_argument("--dataset-size", type=int, help="training images (default: count data.train)")


def _add_study_parsers(sub: argparse._SubParsersAction) -> None:
    pt = sub.add_parser("pretrain", help="classification pre-training of the trunk (the 'ImageNet' stage)")
    _add_config_args(pt)
    st = sub.add_parser("study", help="plan and run a study (arms x schedules x data sizes x seeds), then report")
    st.add_argument("study", help="study YAML (see configs/demo.yaml)")
    st.add_argument("--plan-only", action="store_true",
                    help="write plan.json and subsets, print the runs and their estimated cost, train nothing")
    st.add_argument("--step-time", type=float, help="--plan-only: seconds per training iteration to estimate "
                    "with (e.g. measured on the GPU the study will run on) instead of timing a few steps here")
    st.add_argument("--no-timing", action="store_true", help="--plan-only: counts only, no time estimate")
    st.add_argument("--status", action="store_true", help="each run's state (done, running with ETA, pending, "
                    "failed with its log's last lines), from the run folders and the SLURM queue")
    st.add_argument("--cancel", action="store_true", help="executor: slurm: cancel the study's queued jobs")
    st.add_argument("--no-wait", action="store_true", help="executor: slurm: submit the jobs and return")
    it = sub.add_parser("init", help="write a commented starter study for your dataset (measured from it)")
    it.add_argument("dataset", help="training set: COCO json or VOC folder")
    it.add_argument("--out", required=True, help="the study file to write, e.g. study.yaml")
    it.add_argument("--val", help="validation set (default: the training file's name with 'train' -> 'val')")
    it.add_argument("--weights", help="pre-trained trunk weights for the pre-trained arm (a local state dict)")
    it.add_argument("--output-dir", help="the study's output folder (default: the study file's name)")
    fo = sub.add_parser("forecast", help="final AP forecast at longer schedules from a study's finished ones")
    fo.add_argument("study_dirs", nargs="+", help="study folder(s) (run folders, cells.json or report.md)")
    fo.add_argument("--holdout", action="store_true",
                    help="forecast each chain's longest schedule from the shorter ones: error and coverage")
    fo.add_argument("--seed-std", type=float, default=1.0, help="assumed seed spread (AP) when one seed")
    fo.add_argument("--out", help="also write the table to this Markdown file")
    cp = sub.add_parser("compare", help="two sets of runs (e.g. fp32 vs bf16, one run per seed): every metric's "
                        "gap with a paired-bootstrap interval and the within/ahead/undecided decision")
    cp.add_argument("--a", nargs="+", required=True, metavar="RUN", help="run folders of side A (one per seed)")
    cp.add_argument("--b", nargs="+", required=True, metavar="RUN", help="run folders of side B (one per seed)")
    cp.add_argument("--names", nargs=2, default=["A", "B"], metavar=("A", "B"), help="what to call the sides")
    cp.add_argument("--margin", type=float, default=1.0, help="δ in AP: 'within' needs the interval inside ±δ")
    cp.add_argument("--seed-std", type=float, default=1.0, help="assumed seed spread (AP) for a side with one run")
    cp.add_argument("--out", help="also write the table (.md) or the numbers (.json) to this file")
    rp = sub.add_parser("report", help="rebuild report.md and plots from a study folder (no training)")
    rp.add_argument("study_dir")
    sub.add_parser("demo", help="the main job: configs/demo.yaml (what `make demo` runs)")
    cf = sub.add_parser("configs", help="list configs/paper/ (or --dir DIR, --all) with the published number of each")
    cf.add_argument("--dir", default="configs/paper", help="a folder of configs, e.g. configs/modern (detectron2's "
                    "and torchvision's LSJ scratch recipes); default: configs/paper (the paper's experiments)")
    cf.add_argument("--all", action="store_true", help="every folder of " + " and ".join(CONFIG_DIRS) +
                    ", each under its name")


def cmd_config(args: argparse.Namespace) -> int:
    from fromscratch.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.sub == "subset":
        return _data_subset(args)
    if args.sub == "show":
        from fromscratch.evaluation.show import show_dataset

        n = show_dataset(args.dataset, args.out, args.n, args.ids, args.seed, args.cols)
        print(f"{n} images drawn to {args.out}")
        return 0
    out = Path(args.out) / args.name
    cache = Path(args.out) / "cache"
    if args.name == "trees":
        from fromscratch.data.embedded.trees import prepare_trees

        counts = prepare_trees(out, cache)
    elif args.name == "fashion-mnist":
        from fromscratch.data.embedded.fashion_mnist import prepare_fashion_mnist

        counts = prepare_fashion_mnist(out)
    else:
        from fromscratch.data.embedded.fashion_scenes import prepare_fashion_scenes

        counts = prepare_fashion_scenes(out, cache, args.num_train, args.num_val, args.image_size, args.seed)
    for split, c in counts.items():
        detail = ", ".join(f"{v} {k}" for k, v in c.items()) if isinstance(c, dict) else f"{c} images"
        print(f"{args.name} {split}: {detail}")
    print(f"written to {out}/")
    return 0


def _data_subset(args: argparse.Namespace) -> int:
    from fromscratch.data.coco import read_json
    from fromscratch.data.subsets import choose_subset, default_subset_path, write_subset

    data = read_json(args.dataset)
    ids = [img["id"] for img in data.get("images", [])]
    chosen = choose_subset(ids, args.size, args.seed)
    out = Path(args.out) if args.out else default_subset_path(args.dataset, args.size, args.seed)
    write_subset(out, chosen, args.dataset, args.seed)
    print(f"{len(chosen)} of {len(ids)} image ids (seed {args.seed}) written to {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fromscratch.data.sources import find_problems

    problems, summary = find_problems(args.dataset, args.image_root, not args.no_images, args.allow_outside_root)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.dataset}")
        return 1
    print(f"{args.dataset}: OK ({summary})")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.models.build import build_model
    from fromscratch.models.summary import summarize

    cfg = load_config(args.config, args.overrides)
    num_classes = cfg.model.num_classes or args.num_classes
    print(summarize(build_model(cfg, num_classes), args.size or cfg.data.test_scale))
    return 0


def launch_local(args: argparse.Namespace) -> int:
    """`train --nproc N`: run this command again under torchrun with N local processes (detectron2's
    --num-gpus); on CPU each process gets cores/N threads unless train.threads is given."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "fromscratch", "train", args.config]
    if not any(o.startswith("train.threads=") for o in args.overrides):
        cmd.append(f"train.threads={max(1, (os.cpu_count() or 1) // args.nproc)}")
    cmd += list(args.overrides) + (["--resume"] if args.resume else [])
    return subprocess.call(cmd)


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from fromscratch.config import load_config
    from fromscratch.engine.trainer import train
    from fromscratch.errors import ConfigError

    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: needs at least 1 process")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_local(args)
    if args.slurm:
        return _submit_train(args)
    from fromscratch.engine.trackers import require_trackers

    cfg = load_config(args.config, args.overrides)
    require_trackers(cfg.tracking)  # an enabled tracker's missing package: refused before any data is read
    result = train(cfg, resume=args.resume)
    from fromscratch.log import process_rank

    if process_rank() != 0:  # under torchrun: rank 0 reports
        return 0
    print(f"\ntrained {result['iterations']} iterations; run folder: {result['output_dir']}")
    s = result["samples"]
    print(f"samples seen: {s['images']:,} images, {s['instances']:,} instances, {s['pixels']:.3g} pixels")
    if result["table"]:
        print(result["table"])
    return 0


def _submit_train(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.data.build import build_datasets
    from fromscratch.engine.trainer import refuse_unless_resuming
    from fromscratch.study.slurm import submit_train

    cfg = load_config(args.config, args.overrides)
    build_datasets(cfg.data)  # every data check before the job waits in the queue
    refuse_unless_resuming(Path(cfg.output_dir), args.resume)
    jid = submit_train(cfg, Path(args.config))
    print(f"submitted job {jid}: {cfg.output_dir} (log: {Path(cfg.output_dir) / 'slurm'}/{jid}_0_log.out); "
          f"cancel with scancel {jid}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.engine.inference import evaluate_checkpoint

    out, table = evaluate_checkpoint(load_config(args.config, args.overrides), args.weights, args.out)
    print(table)
    print(f"detections and metrics written to {out}/")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.engine.inference import predict_images

    r = predict_images(load_config(args.config, args.overrides), args.weights, args.images, args.out,
                       args.score_thresh)
    print(f"{r['written']} image(s) drawn, {r['detections']} detections, {len(r['skipped'])} skipped; "
          f"written to {r['out']}/ (detections.json, images.json)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.engine.export import default_out, export_model, run_config, self_check
    from fromscratch.errors import FromScratchError

    config = args.config or run_config(args.checkpoint)
    if not Path(args.checkpoint).is_file():
        raise FromScratchError(f"{args.checkpoint}: no such checkpoint file")
    out = Path(args.out) if args.out else default_out(args.checkpoint, args.format)
    if out.resolve() == Path(args.checkpoint).resolve():
        raise FromScratchError(f"--out {out}: that is the checkpoint itself")
    cfg = load_config(config, args.overrides)
    r = export_model(cfg, args.checkpoint, args.format, out)
    print(f"exported {r['meta_arch']} ({len(r['class_names'])} classes) as {r['format']} to {out} "
          f"({r['bytes'] / 1e6:.1f} MB, {r['seconds']:.1f} s); description: {out}.json")
    print(f"input: {r['input']}; outputs: {', '.join(r['outputs'])}")
    if not args.no_check:
        try:
            c = self_check(cfg, args.checkpoint, out)
        except AssertionError as e:
            print(f"check FAILED: the exported file's detections differ from PyTorch's: {e}", file=sys.stderr)
            return 1
        if c is None:
            print("not checked: onnxruntime is not installed (pip install 'fromscratch[export]')")
        else:
            sizes = ", ".join(f"{h}x{w}" for h, w in c["sizes"])
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in c["max_diff"].items() if k != "labels")
            print(f"checked against PyTorch on two noise images ({sizes} px, {c['detections']} detections): "
                  f"largest differences {diffs}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.data.build import train_stats
    from fromscratch.engine.schedule import describe, make_plan

    cfg = load_config(args.config, args.overrides)
    n, pixels, inst = (args.dataset_size, None, None) if args.dataset_size else train_stats(cfg.data)
    print(describe(make_plan(cfg.train, n), pixels, inst))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fromscratch.config import load_config
    from fromscratch.study.pretrain import pretrain

    r = pretrain(load_config(args.config, args.overrides))
    check = (f"k-NN top-1 on val object crops {r['knn_top1']:.3f} (random init {r['knn_top1_random_init']:.3f})"
             if r.get("knn_top1") is not None else f"held-out top-1 {r['val_top1']}")
    print(f"pre-trained {r['backbone']} ({r['norm']}) {r.get('method', 'supervised')} on {r['source']}: "
          f"{r['images']:,} images at {r['image_size']} px, {r['epochs']:.2f} epochs, {r['wall_time_s']} s; {check}")
    print(f"trunk weights: {r['output']}/backbone.pth (use as model.backbone.weights)")
    return 0


def cmd_study(args: argparse.Namespace, path: str | None = None) -> int:
    from fromscratch.study.report import write_report
    from fromscratch.study.runner import run_study

    if getattr(args, "status", False) or getattr(args, "cancel", False):
        return _study_status(args)
    plan_only = getattr(args, "plan_only", False)
    study_dir = run_study(path or args.study, plan_only=plan_only, step_time=getattr(args, "step_time", None),
                          timed=not getattr(args, "no_timing", False), wait=not getattr(args, "no_wait", False))
    if getattr(args, "no_wait", False) and not plan_only:
        print(f"jobs submitted; watch them with: fromscratch study {args.study} --status")
        return 0
    if plan_only:
        parts = sorted(p.parent for p in study_dir.glob("*/plan.json")) if (study_dir / "suite.json").exists() \
            else [study_dir]
        for part in parts:
            print(f"{part}:\n{(part / 'cost.md').read_text()}")
        print("plan written to " + ", ".join(str(p / "plan.json") for p in parts))
        return 0
    return _print_report(*write_report(study_dir))


def _study_status(args: argparse.Namespace) -> int:
    from fromscratch.errors import FromScratchError
    from fromscratch.study.plan import load_study, load_suite

    suite = load_suite(args.study)
    if suite is not None:
        from fromscratch.study.plan import part_dir

        dirs = [part_dir(suite[0], p) for p in suite[0].parts]
    else:
        dirs = [Path(load_study(args.study)[0].output_dir)]
    for d in dirs:
        if not (d / "plan.json").exists():
            raise FromScratchError(f"{d}: no plan.json: the study was never started (fromscratch study {args.study})")
        if args.cancel:
            from fromscratch.study.slurm import cancel

            ids = cancel(d)
            print(f"{d}: cancelled {len(ids)} job(s)" + (f": {' '.join(ids)}" if ids else ""))
        else:
            from fromscratch.study.status import status_lines

            print("\n".join(status_lines(d)))
    return 0


def _print_report(path: Path, verdicts: list[str]) -> int:
    print(f"\nreport: {path}")
    for v in verdicts:
        print(f"- {v}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from fromscratch.study.starter import write_starter

    out, m = write_starter(args.dataset, Path(args.out), args.val, args.weights, args.output_dir)
    print(f"{m.images} training and {m.val_images} validation images, {len(m.categories)} categories, median "
          f"image {m.short_side:.0f} x {m.long_side:.0f} px, objects {m.object_px[1]:.0f} px (median)")
    print(f"wrote {out}: read its comments, then\n  fromscratch study {out} --plan-only")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fromscratch.study.report import write_report

    return _print_report(*write_report(args.study_dir))


def cmd_forecast(args: argparse.Namespace) -> int:
    from fromscratch.study.forecast import forecast_table, holdout_table
    from fromscratch.utils import atomic_write_text

    dirs = [Path(d) for d in args.study_dirs]
    if args.holdout:
        text = holdout_table(dirs, args.seed_std)
    else:
        text = "\n".join(f"## {d}\n\n{forecast_table(d, args.seed_std)}" for d in dirs)
    print(text, end="")
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fromscratch.study.compare import compare_runs, compare_text
    from fromscratch.utils import atomic_write_text

    c = compare_runs([Path(x) for x in args.a], [Path(x) for x in args.b], args.margin, args.seed_std,
                     tuple(args.names))
    text = compare_text(c)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(c, indent=1) if args.out.endswith(".json") else text + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    print("fromscratch demo: pre-train on fashion-mnist, then scratch vs pre-trained Mask R-CNN on fashion-scenes "
          "(configs/demo.yaml)", flush=True)
    return cmd_study(args, "configs/demo.yaml")


CONFIG_DIRS = ("configs/paper", "configs/modern")  # `fromscratch configs`: the paper's, then modern recipes


def cmd_configs(args: argparse.Namespace) -> int:
    """Each config of a folder with its header's published number (`# paper:`, or `# published:` for
    numbers from elsewhere than the paper, e.g. detectron2's model zoo)."""
    status = 0
    for folder in CONFIG_DIRS if args.all else (args.dir,):
        files = sorted(Path(folder).glob("*.yaml"))
        if not files:
            print(f"no configs in {folder}")
            status = 1
            continue
        if args.all:
            print(f"{folder}/")
        width = max(len(f.name) for f in files)
        for f in files:
            number = next((ln.split(":", 1)[1].strip() for ln in f.read_text().splitlines()
                           if ln.startswith(("# paper:", "# published:"))), "(no published number)")
            print(f"{'  ' if args.all else ''}{f.name:{width}s}  {number}")
    if not args.all and args.dir == CONFIG_DIRS[0] and Path(CONFIG_DIRS[1]).is_dir():
        print(f"(more: fromscratch configs --dir {CONFIG_DIRS[1]}, or --all)", file=sys.stderr)
    return status


COMMANDS = {"configs": cmd_configs, "predict": cmd_predict, "config": cmd_config, "pretrain": cmd_pretrain,
            "study": cmd_study, "report": cmd_report, "compare": cmd_compare, "forecast": cmd_forecast,
            "init": cmd_init,
            "demo": cmd_demo, "model": cmd_model, "train": cmd_train, "eval": cmd_eval,
            "schedule": cmd_schedule, "data": cmd_data, "validate": cmd_validate, "export": cmd_export}


OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, accepting dotted overrides anywhere after the config path (``eval CFG --weights W
    output_dir=X``), as detectron2's ``opts`` and mmdetection's ``--cfg-options`` users expect."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        if args.cmd == "predict":  # `images` is greedy: an override among them is moved over
            moved = [a for a in args.images if OVERRIDE.match(a) and not Path(a).exists()]
            args.images = [a for a in args.images if a not in moved]
            if not args.images:
                parser.error("predict: no image files or folders given")
            args.overrides = list(args.overrides) + moved
        args.overrides = list(args.overrides) + [a for a in extra if OVERRIDE.match(a)]
        extra = [a for a in extra if not OVERRIDE.match(a)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fromscratch.errors import FromScratchError, Stopped
    from fromscratch.log import setup_logging

    setup_logging()

    try:
        return COMMANDS[args.cmd](args)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return 130
    except FromScratchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fromscratch configs | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a storage or system fault outside our own writers (their StorageError is above)
        from fromscratch.utils import WRITE_FAULTS, storage_error

        if e.errno in WRITE_FAULTS:
            print(f"error: {storage_error(Path(e.filename or '(unnamed file)'), e)}", file=sys.stderr)
        else:
            print(f"error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e} (errno {e.errno}): a "
                  "fault of the machine or its storage; fix it and run the same command again", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("\nThis is an internal error of fromscratch, not a problem with your data or config: "
              "please report it with the command you ran and the traceback above.", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
