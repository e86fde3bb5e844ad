"""Runs a suite: resource check, components, generation (resumable), metrics, results.

Reproducibility contract: caption `i` under suite seed `s` is generated from the
random stream `caption_seed(s, i)`, so samples do not depend on batch size,
order, resumption or sharding. Samples are PNGs under
`<out>/samples/<alias>/seed<s>/<caption_id>.png`, each written atomically, so a
killed run loses at most the batch in flight and a rerun generates only what is
missing, provided the same build made what is there (`made-by.json` per folder; else
the folder is generated again). Metrics always read the samples back from disk, so an
interrupted and an uninterrupted run compute the same numbers from the same bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from bench.api import CaptionItem, RunContext, SampleBatch, TimingRecord, UserError
from bench.build import Builder, default_threads
from bench.build_pool import ready_builder
from bench.cache import (atomic_write_bytes, cache_dir, canonical_json, code_fingerprint, key_hash, machine_name,
                         platform_key)
from bench.datasets.base import build_dataset
from bench.registry import COMPONENTS, DATASETS, METRICS, SYSTEMS
from bench.results import Results, measured_row
from bench.suite import Suite, args_dict, path_args, references, split_model_path
from reference.errors import first_line
from reference.progress import progress_bar


RUN_MARKER = ".bench-run"  # written into a run folder as soon as it is made (before any training)


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a bench run or what one left (what --fresh may delete): an empty folder, or one with
    the marker a run writes first (so a run stopped while training counts) or, from runs before the marker, the
    resolved suite. Names any tool might use (samples/, results.csv) prove nothing."""
    return path.is_dir() and (not any(path.iterdir()) or (path / RUN_MARKER).is_file()
                              or (path / "suite.resolved.json").is_file())


def caption_seed(seed: int, caption_id: int) -> int:
    """The random stream of one caption under one suite seed."""
    digest = hashlib.sha256(f"clipgen-bench:{seed}:{caption_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_resources(suite: Suite) -> list[str]:
    """Every missing dataset file, weight file or package, each with its fix (empty when all is there)."""
    missing: list[str] = []

    def ask(registry, name, args):
        fn = getattr(registry.get(name).factory, "missing_resources", None)  # (args) -> one line per problem
        if fn is not None:
            missing.extend(fn(args))

    ask(DATASETS, suite.dataset.name, suite.dataset.args)
    if suite.dataset.train_source is not None:
        ask(DATASETS, suite.dataset.train_source.name, suite.dataset.train_source.args)
    for spec in suite.components.values():
        if spec.path is not None:
            file = split_model_path(spec.kind, spec.path)[1]
            missing.extend(_missing_path(file, f"component {spec.name!r} ({spec.kind})",
                                         f"components.{spec.name}.path"))
        else:
            ask(COMPONENTS, spec.kind, spec.train)
    for s in suite.systems:
        ask(SYSTEMS, s.name, s.args)
        for name, path in path_args(s.args):  # every argument declared a path (registry metadata `path`)
            missing.extend(_missing_path(path, f"system {s.alias!r}", f"systems.{s.alias}.args.{name}"))
    for m in suite.metrics:
        ask(METRICS, m.name, m.args)
    return list(dict.fromkeys(missing))


def _missing_path(path: str, what: str, key: str) -> list[str]:
    if "$" in path:
        var = path[path.index("$"):].split("/")[0].strip("${}")
        return [f"{what}: {path}: environment variable {var} is not set; export {var}=/folder/with/the/files "
                f"or set {key}"]
    if not Path(path).expanduser().exists():
        return [f"{what}: {path} does not exist; put the file there or set {key}"]
    return []


def _png_bytes(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _load_png(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError and a truncated file are OSErrors
        raise UserError(f"{path}: not a readable sample image ({first_line(err)}); delete it and run again: the run "
                        "generates what is missing") from None
    return arr.permute(2, 0, 1)  # [3,H,W]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's resident-set high-water mark (VmHWM; writing 5 to
    /proc/self/clear_refs resets it). Elsewhere the peak stays the process's since it started."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_memory(device: str) -> int:
    """Bytes at the peak since the last `_reset_peak_memory`: CUDA memory allocated by tensors, or the process's
    resident set on a CPU (VmHWM; ru_maxrss, the peak since start, where /proc is missing)."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def per_caption_columns(values: dict[str, float], split: str, columns: set[str]) -> dict[str, float]:
    """Name a caption's values by the table columns they average into.

    A metric leaves one value per caption under its name (e.g. "attribute-accuracy"); the table has
    columns per split ("attribute-accuracy/seen/all", "caps/held-out", "caps/all"). A caption's value
    belongs to its own split's column and to the all-captions column, where those exist.
    """
    out = {}
    for key, v in values.items():
        for column in (key, f"{key}/{split}", f"{key}/{split}/all", f"{key}/all", f"{key}/all/all"):
            if column in columns:
                out[column] = v
    return out


class Runner:
    """One suite run. With `world > 1` this process generates only its shard of the captions
    (caption index % world == rank); `run()` in the coordinating process then finds every sample on
    disk and computes the metrics once, so the numbers equal a single-process run exactly."""

    def __init__(self, suite: Suite, out_dir: str | Path | None = None, device: str = "cpu", limit: int | None = None,
                 fresh: bool = False, progress: bool = True, cache: str | Path | None = None, rank: int = 0,
                 world: int = 1, build_workers: int = 1, coordinator: bool | None = None):
        if not 0 <= rank < world:
            raise UserError(f"shard {rank}/{world}: need 0 <= rank < world")
        self.suite = suite
        self.out = Path(out_dir) if out_dir else Path("runs") / suite.suite
        self.device = device
        self.limit = limit
        self.fresh = fresh
        self.progress = progress
        self.cache = str(cache or cache_dir())
        self.rank, self.world = rank, world
        self.build_workers = build_workers  # > 1: train missing artefacts in worker processes (bench/build_pool.py)
        # the coordinator (a plain run, the --nproc parent, torchrun rank 0) prepares the sample folders before any
        # shard generates; a shard (--shard R/N, an --nproc child, another torchrun rank) only checks them
        self.coordinator = world == 1 if coordinator is None else coordinator

    # ---- the whole job ---------------------------------------------------------------------
    def run(self) -> Results:
        """Build, generate everything still missing, measure, write the results."""
        builder, dataset, items, systems = self.prepare()
        self.generate_all(systems, items)
        return self.measure(builder, dataset, items, systems)

    def run_shard(self) -> None:
        """Build (from the cache) and generate this process's shard only; no metrics."""
        _, _, items, systems = self.prepare()
        self.generate_all(systems, items)

    def prepare(self):
        missing = check_resources(self.suite)
        if missing:
            raise UserError("missing resources (nothing was run):\n  - " + "\n  - ".join(missing))
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        # all threads to build and measure (in-process training names this count in its cache keys, so it must
        # not depend on the shard count); a shard's share of the cores only while generating
        torch.set_num_threads(self.suite.generation.threads or default_threads())
        torch.set_flush_denormal(True)
        dataset = build_dataset(self.suite.dataset)
        items = dataset.eval_captions()
        if self.limit is not None:
            items = items[: self.limit]
        if not items:
            raise UserError("no captions to generate for (check dataset.num_captions and --limit)")
        self.resolution = dataset.resolution
        if self.fresh and self.out.exists() and self.coordinator:  # never a shard: others may be writing
            here = Path.cwd().resolve()
            if here == self.out.resolve() or self.out.resolve() in here.parents:
                raise UserError(f"--fresh would delete {self.out}, which holds the current folder: choose another "
                                "--out")
            if not is_run_folder(self.out):
                raise UserError(f"--fresh would delete {self.out}, which is not a bench run folder (no {RUN_MARKER} "
                                f"or suite.resolved.json in it): choose another --out or empty it yourself")
            shutil.rmtree(self.out)
        created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (self.out / RUN_MARKER).exists():
                atomic_write_bytes(self.out / RUN_MARKER, b"a clipgen-bench run folder: bench run --fresh may delete "
                                                          b"it\n")
        except OSError as err:
            if created:
                shutil.rmtree(self.out, ignore_errors=True)
            raise UserError(f"cannot write the run folder {self.out}: {err.strerror} (--out)") from None
        try:
            builder = ready_builder(self.suite, dataset, self.device, self.cache, self.progress, self.build_workers,
                                    self.out / "build-logs")
            systems = {spec.alias: builder.system(spec.alias) for spec in self.suite.systems}
            for system in systems.values():  # systems that can tell up front that they lack a caption's image
                if hasattr(system, "check_captions"):
                    system.check_captions([it.caption_id for it in items])
            self.prepare_sample_folders(builder, dataset)
        except Exception:  # bad input (UserError) or a failure while building: not an interrupt, which keeps its logs
            if created:  # a run that stops before generating leaves no folder behind
                shutil.rmtree(self.out, ignore_errors=True)
            raise
        atomic_write_bytes(self.out / "suite.resolved.json",
                           json.dumps(self.suite.resolved, indent=1, default=str).encode())
        return builder, dataset, items, systems

    def generate_all(self, systems: dict, items: list[CaptionItem]) -> None:
        mine = [it for i, it in enumerate(items) if i % self.world == self.rank]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.suite.generation.threads or max(1, default_threads() // self.world))
        try:
            for alias, system in systems.items():
                for seed in self.suite.seeds_of(alias):
                    self.generate(alias, system, mine, seed)
        finally:
            torch.set_num_threads(threads)

    def measure(self, builder: Builder, dataset, items: list[CaptionItem], systems: dict) -> Results:
        for spec in self.suite.systems:  # an earlier run's seeds this suite no longer has would join the intervals
            keep = {f"seed{s}.json" for s in self.suite.seeds_of(spec.alias)}
            for path in (self.out / "per_caption" / spec.alias).glob("seed*.json"):
                if path.name not in keep:
                    path.unlink()
        results = Results(self.suite, self.device)
        for spec in self.suite.systems:
            for seed in self.suite.seeds_of(spec.alias):
                results.extend(self.evaluate(spec, systems[spec.alias], builder, dataset, items, seed))
        results.extend(self.component_diagnostics(builder, dataset, items))
        results.add_reported()
        results.save(self.out)
        return results

    # ---- generation ------------------------------------------------------------------------
    def sample_dir(self, alias: str, seed: int) -> Path:
        return self.out / "samples" / alias / f"seed{seed}"

    def made_by(self, builder: Builder, dataset, alias: str) -> dict:
        """What a system's samples depend on: its name and arguments, every artefact it was built from (trained
        weights by cache key, checkpoint files by path, size and mtime), the dataset and all its captions (a
        random-caption control draws from them), the platform (device type, processor model, libraries) and the
        code that seeds and writes samples. Not the batch size or thread count (see the module docstring)."""
        spec = self.suite.system(alias)
        captions = key_hash({"captions": [[it.caption_id, it.caption] for it in dataset.eval_captions()]})
        what = {"system": spec.name, "args": args_dict(spec.args), "artefacts": builder.made_of(("system", alias)),
                "dataset": dataset.identity(), "captions": captions, "platform": platform_key(self.device),
                # how samples are seeded and stored (the systems' own code is in their artefact entries)
                "code": code_fingerprint(f"{__name__}:caption_seed", f"{__name__}:_png_bytes",
                                         f"{__name__}:Runner.generate")}
        return {"fingerprint": key_hash(what), **what}

    def prepare_sample_folders(self, builder: Builder, dataset) -> None:
        """Samples left by an earlier run are reused (resume) only if the same build made them. The coordinator
        empties a sample folder whose made-by.json differs, or that has samples but no record (dropping their
        timings too), and writes the record. A shard never deletes (other shards may be writing): on such a folder
        it stops with a UserError before generating anything; it only writes the record of a new folder."""
        plans = []
        for spec in self.suite.systems:
            made = self.made_by(builder, dataset, spec.alias)
            for seed in self.suite.seeds_of(spec.alias):
                folder = self.sample_dir(spec.alias, seed)
                try:
                    old = json.loads((folder / "made-by.json").read_text()).get("fingerprint")
                except (OSError, ValueError, AttributeError):
                    old = None
                if old != made["fingerprint"]:
                    plans.append((spec.alias, seed, folder, made, old, sorted(folder.glob("*.png"))))
        stale = [folder for _, _, folder, _, old, pngs in plans if old is not None or pngs]
        if stale and not self.coordinator:
            raise UserError(f"{stale[0]} holds samples of another build than this one ({len(stale)} folder(s) in "
                            f"all); run the command once without --shard: it generates them again")
        for alias, seed, folder, made, old, pngs in plans:
            if self.coordinator:
                if pngs:
                    print(f"[samples] {alias} seed {seed}: the {len(pngs)} samples on disk came from "
                          f"{'another build' if old else 'an unrecorded build'}: removing them and generating what this run "
                          "asks for", flush=True)
                for path in pngs:
                    path.unlink()
                for path in (self.out / "timings" / alias).glob(f"seed{seed}.*jsonl"):
                    path.unlink()
            atomic_write_bytes(folder / "made-by.json", canonical_json(made, indent=1).encode())

    def generate(self, alias: str, system: Any, items: list[CaptionItem], seed: int) -> None:
        folder = self.sample_dir(alias, seed)
        folder.mkdir(parents=True, exist_ok=True)
        todo = [it for it in items if not (folder / f"{it.caption_id:06d}.png").exists()]
        if not todo:
            return
        bs = self.suite.generation.batch_size
        shard = f".rank{self.rank}" if self.world > 1 else ""
        timing_file = self.out / "timings" / alias / f"seed{seed}{shard}.jsonl"
        timing_file.parent.mkdir(parents=True, exist_ok=True)
        if self.suite.generation.warmup:
            warm = todo[: min(2, len(todo))]
            system.generate([it.caption for it in warm], [it.caption_id for it in warm],
                            [caption_seed(seed, it.caption_id) for it in warm])
        _reset_peak_memory(self.device)  # each system's (and seed's) own peak, not the training's before it
        bar = progress_bar(total=len(todo), desc=f"generate {alias} seed {seed}", unit="img", enabled=self.progress,
                           leave=False)
        for start in range(0, len(todo), bs):
            batch = todo[start:start + bs]
            # a one-image call runs as two identical rows: oneDNN convolutions round a batch of one differently
            # (VQGAN decoding moved ~1 in 2000 pixels by one level), and the last chunk of a resumed, limited or
            # sharded run must equal what a full batch would have made
            call = batch * 2 if len(batch) == 1 else batch
            seeds = [caption_seed(seed, it.caption_id) for it in call]
            _sync(self.device)
            wall0 = time.time()
            t0 = time.perf_counter()
            images = system.generate([it.caption for it in call], [it.caption_id for it in call], seeds)
            _sync(self.device)
            seconds = time.perf_counter() - t0
            images = images.detach().cpu()
            res = self.resolution
            if images.dtype != torch.uint8 or tuple(images.shape) != (len(call), 3, res, res):
                raise RuntimeError(f"system {alias!r} returned {images.dtype} {tuple(images.shape)}; expected uint8 "
                                   f"[{len(call)},3,{res},{res}] (the dataset's resolution: FID-k blurs at it)")
            images = images[: len(batch)]
            for it, image in zip(batch, images):
                atomic_write_bytes(folder / f"{it.caption_id:06d}.png", _png_bytes(image))
            # the timed call made len(call) images (two for a one-image batch): credit what was timed
            record = TimingRecord(seconds=seconds, images=len(call),
                                  tokens=len(call) * int(getattr(system, "tokens_per_image", 0)),
                                  peak_memory_bytes=_peak_memory(self.device), batch_size=bs, device=self.device,
                                  process=self.rank, start=wall0, threads=torch.get_num_threads())
            with open(timing_file, "a") as fh:
                fh.write(json.dumps(dataclasses.asdict(record)) + "\n")
            bar.update(len(batch))
        bar.close()

    def load_samples(self, alias: str, seed: int, items: list[CaptionItem], batch_size: int) -> Iterator[SampleBatch]:
        folder = self.sample_dir(alias, seed)
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            images = torch.stack([_load_png(folder / f"{it.caption_id:06d}.png") for it in batch])
            yield SampleBatch(images, [it.caption for it in batch], [it.caption_id for it in batch],
                              [it.info for it in batch])

    def timings(self, alias: str, seed: int) -> list[TimingRecord]:
        folder = self.out / "timings" / alias
        lines = [line for path in sorted(folder.glob(f"seed{seed}.jsonl")) + sorted(folder.glob(f"seed{seed}.rank*.jsonl"))
                 for line in path.read_text().splitlines()]
        records = []
        for line in lines:
            if line.strip():
                try:
                    records.append(TimingRecord(**json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    continue  # a line cut by a kill
        return records

    # ---- metrics ---------------------------------------------------------------------------
    def evaluate(self, spec, system, builder: Builder, dataset, items: list[CaptionItem], seed: int) -> list[dict]:
        metrics = [(m, METRICS.get(m.name).factory(m.args)) for m in self.suite.metrics]
        if not metrics:
            return []
        ctx = RunContext(suite=self.suite.suite, dataset=dataset, device=self.device, cache_dir=self.cache,
                         system_alias=spec.alias, system=system, timings=self.timings(spec.alias, seed),
                         component=builder.component, made_with=lambda name: builder.made_with(spec.alias, name))
        for _, metric in metrics:
            if hasattr(metric, "start"):  # optional: metrics that need components stream instead of buffering
                metric.start(ctx)
        bar = progress_bar(total=len(items), desc=f"metrics {spec.alias} seed {seed}", unit="img",
                           enabled=self.progress, leave=False)
        for batch in self.load_samples(spec.alias, seed, items, max(self.suite.generation.batch_size, 64)):
            for _, metric in metrics:
                metric.update(batch)
            bar.update(len(batch.images))
        bar.close()
        made_by = json.loads((self.sample_dir(spec.alias, seed) / "made-by.json").read_text())["fingerprint"]
        rows = []
        for mspec, metric in metrics:
            used = [value for _, what, _, value in references(mspec.args) if what == "component"]
            provenance = self.run_provenance(builder, used)  # once per metric, not per row
            for value in metric.compute(ctx):
                rows.append(measured_row(self.suite, spec, system, mspec, value, seed, self.device, made_by,
                                         provenance))
        if ctx.per_caption:
            per_caption = self.out / "per_caption" / spec.alias / f"seed{seed}.json"
            per_caption.parent.mkdir(parents=True, exist_ok=True)
            columns = {f"{r['metric']}/{r['variant']}" if r["variant"] else r["metric"] for r in rows}
            split = {it.caption_id: it.info.get("split", "") for it in items}
            expanded = {str(cid): per_caption_columns(values, split.get(cid, ""), columns)
                        for cid, values in ctx.per_caption.items()}
            atomic_write_bytes(per_caption, json.dumps(expanded).encode())
        return rows

    def run_provenance(self, builder: Builder, components=()) -> dict:
        """What every row adds to `extra`: the resolved suite's hash, --limit, and each component the number
        used (a metric's judge, captioner or evaluator CLIP) by what it was built from."""
        return {"suite_hash": self.suite.hash(), "limit": self.limit, "machine": machine_name(self.device),
                "components_made_of": {name: key_hash({"key": builder.key_of(name),
                                                       "made_of": builder.made_of(("component", name))})
                                       for name in sorted(set(components))}}

    # ---- diagnostics of the suite's components -----------------------------------------------
    def component_diagnostics(self, builder: Builder, dataset, items: list[CaptionItem]) -> list[dict]:
        """Rows about components rather than systems: every CLIP's modality gap (on real images of the
        eval captions), and whatever a component reports through `diagnostics()` (e.g. the training probe)."""
        from reference.clip import modality_gap

        from bench.results import component_row

        rows = []
        real = None
        for name, spec in self.suite.components.items():
            component = builder.component(name)
            provenance = self.run_provenance(builder, [name])
            if spec.kind == "clip":
                if real is None:
                    real = dataset.real_images(items, [caption_seed(-1, it.caption_id) for it in items])
                gap = modality_gap(component, real, [it.caption for it in items])
                for key in ("image_text_cosine", "image_image_cosine", "mean_difference_norm"):
                    if math.isnan(gap[key]):  # image-image needs two images of one caption (a short --limit has none)
                        continue
                    rows.append(component_row(self.suite, name, "modality-gap", key.replace("_", "-"), gap[key],
                                              gap["n"], self.device, provenance))
            for value in getattr(component, "diagnostics", lambda: [])():
                rows.append(component_row(self.suite, name, value.metric, value.variant, value.value, value.n,
                                          self.device, {**value.extra, **provenance}))
        return rows
