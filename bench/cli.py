"""`bench`: run, validate, ls, report, compare, info.

User mistakes (bad suite, missing files, bad input) end with one line on stderr
and exit status 2; nothing is left half-written.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys

import click

# Settings that only act if present when the process starts, so `main` re-executes itself once with
# them (a value the user already set is kept):
# - glibc returns freed memory to the kernel eagerly; on these CPUs that made training steps ~8x slower
#   (page faults; measured by the team's 2-core CPU prototype of the miniature pipeline);
# - libgomp's threads spin 300,000 rounds at each barrier by default: with another busy process on a 2-core
#   machine a descheduled thread keeps its partner spinning, and tiny-GPT training fell from 6.9 to 1.0
#   steps/s. 10,000 rounds gave 2.9 steps/s under that load and the same 6.9 on a quiet machine
#   (measured 2026-11-25; 1,000 rounds cost 8% when quiet).
PROCESS_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
    "GOMP_SPINCOUNT": "10000",
}


def ensure_process_env() -> None:
    missing = {k: v for k, v in PROCESS_ENV.items() if k not in os.environ}
    if not missing or os.environ.get("BENCH_NO_REEXEC") == "1":
        return
    env = {**os.environ, **missing, "BENCH_NO_REEXEC": "1"}  # never loop
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench", *sys.argv[1:]], env)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class Signalled(KeyboardInterrupt):
    """SIGTERM, raised where the program is (as Ctrl-C raises KeyboardInterrupt), so the same cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class _BenchGroup(click.Group):
    def invoke(self, ctx):
        """An interrupted command (Ctrl-C, SIGTERM) ends, after its cleanup, with one line and the shell's status
        for death by that signal (130, 143), not click's "Aborted!" and 1: scripts and CI can tell a stop from a
        failure."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            click.echo(f"\ninterrupted ({signal.Signals(signum).name})", err=True)
            sys.exit(128 + signum)


@click.group(cls=_BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipgen-bench", prog_name="bench")
def cli() -> None:
    """clipgen-bench: train or load CLIP-GEN and baselines, generate, and measure."""


@cli.command()
@click.argument("suite_path", metavar="SUITE")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override any suite key (repeatable)")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the first N eval captions")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="run folder (default runs/<suite>/); rerunning resumes there")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="where to train, generate and measure (cuda: the current GPU)")
@click.option("--fresh", is_flag=True, help="delete the run folder first instead of resuming")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="generate with N processes (captions sharded); metrics are computed once, at the end "
                   "(default: the suite's generation.processes, 1 unless it says)")
@click.option("--shard", default=None, metavar="R/N",
              help="only generate shard R (0..N-1) of N into --out (no metrics); a later plain run measures")
@click.option("--build-workers", type=click.IntRange(min=1), default=None,
              help="train what is not cached in N processes of cores/N threads each; 1: in this process with "
                   "all threads (default: 2 on a CPU with 2 or more cores, else 1). The thread count changes the "
                   "trained weights and is part of their cache key")
def run(suite_path, overrides, limit, out_dir, device, fresh, quiet, nproc, shard, build_workers) -> None:
    """Run SUITE: train or load what it names, generate, measure, print the table.

    Under torchrun (WORLD_SIZE > 1) each rank generates its shard and rank 0 measures.
    """
    from bench.api import UserError
    from bench.suite import MAX_PROCESSES, load_suite
    from reference.errors import refuse_blank_path

    try:
        refuse_blank_path("--out", out_dir, "folder (or leave --out out for runs/<suite>/)", UserError)
        if nproc is not None and nproc > MAX_PROCESSES:
            raise UserError(f"--nproc {nproc}: at most {MAX_PROCESSES} generation processes")
        suite = load_suite(suite_path, overrides)
        from bench.report import sample_grid
        from bench.results import load_per_caption, markdown
        from bench.runner import Runner
        from bench.sharding import parse_shard, run_sharded, run_torchrun, torchrun_world

        if build_workers is None:
            from bench.build_pool import default_build_workers

            build_workers = default_build_workers(device)
        common = dict(out_dir=out_dir, device=device, limit=limit, progress=not quiet, build_workers=build_workers)
        if shard is not None:
            rank, world = parse_shard(shard)
            for flag, given in (("--fresh", fresh), ("--nproc", nproc is not None)):
                if given:
                    raise UserError(f"{flag} does not combine with --shard: a shard generates its part into a folder "
                                    f"other shards share; {'empty the folder first' if flag == '--fresh' else 'start one --shard per process'}")
            Runner(suite, rank=rank, world=world, **common).run_shard()
            click.echo(f"shard {rank}/{world} generated")
            return
        if torchrun_world() > 1:
            if nproc is not None:
                raise UserError("--nproc does not combine with torchrun: its ranks are the generation processes "
                                "(leave --nproc out, or start without torchrun)")
            runner, results = run_torchrun(suite, fresh=fresh, **common)
            if results is None:
                return  # not rank 0: rank 0 measures and prints
        elif (nproc := nproc or suite.generation.processes) > 1:
            runner, results = run_sharded(suite, suite_path, overrides, nproc, fresh=fresh, **common)
        else:
            runner = Runner(suite, fresh=fresh, **common)
            results = runner.run()
    except UserError as err:
        fail(str(err))
    df = results.frame()
    click.echo(f"\n{suite.suite} v{suite.version} ({len(df)} rows) -> {runner.out}/results.csv\n")
    per_caption = load_per_caption(runner.out)
    click.echo(markdown(df, per_caption, headline=True))
    from bench.cache import atomic_write_text
    from bench.datasets.base import build_dataset

    try:  # the results are saved: a full disk here loses only the views of them (`bench report` redraws them)
        atomic_write_text(runner.out / "results.md", markdown(df, per_caption) + "\n")
        click.echo(f"\nall columns: {runner.out / 'results.md'}")
        items = build_dataset(suite.dataset).eval_captions()[: limit or None]
        grid = sample_grid(runner.out, {it.caption_id: it.caption for it in items}, [s.alias for s in suite.systems],
                           suite.generation.seeds[0])
    except OSError as err:
        fail(f"the results are in {runner.out}/results.csv, but {err.filename or 'results.md or grid.png'} could not "
             f"be written: {err.strerror or err}")
    if grid:
        click.echo(f"\nsample grid: {grid}")


@cli.command()
@click.argument("suite_paths", nargs=-1, required=True, metavar="SUITE...")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="override any suite key (repeatable), as bench run takes it")
def validate(suite_paths, overrides) -> None:
    """Check SUITE files' schema and names (needs no data and no weights)."""
    from bench.api import UserError
    from bench.suite import load_suite

    failed = False
    for path in suite_paths:
        try:
            suite = load_suite(path, overrides)
        except UserError as err:
            click.echo(f"error: {err}", err=True)  # `fail`'s line, but the other files are still checked
            failed = True
            continue
        click.echo(f"ok  {path}: {suite.suite} v{suite.version}, {len(suite.components)} components, "
                   f"{len(suite.systems)} systems, {len(suite.metrics)} metrics")
    if failed:
        sys.exit(2)


def _trains_on(entry) -> str:
    reads = getattr(entry.factory, "reads", None)  # the data a trained one is keyed by (Builder.data_key)
    return f" [trains on: {' + '.join(reads)}]" if reads else ""


@cli.command(name="ls")
@click.argument("name", required=False)
def ls_(name) -> None:
    """List datasets, systems, metrics, component kinds and presets; with NAME, that entry's arguments."""
    from bench.registry import COMPONENTS, DATASETS, METRICS, SYSTEMS, load_all

    load_all()  # a plugin that fails to load: its one line before anything is printed
    registries = (("datasets", DATASETS), ("systems", SYSTEMS), ("metrics", METRICS), ("component kinds", COMPONENTS))
    if name is not None:
        _ls_one(name, registries)
        return
    for title, reg in registries:
        click.echo(f"{title}:")
        for e in reg.entries():
            click.echo(f"  {e.name:<22} {e.description}{_trains_on(e)}")
    from reference.clip import PRESETS as CLIP_PRESETS
    from reference.configs import PRESETS

    click.echo("presets (vqgan components and clipgen systems: `train: {preset: NAME}`):")
    for name, p in PRESETS.items():
        v, g = p.vqgan, p.gpt
        click.echo(f"  {name:<22} VQGAN {v.resolution}px -> {v.grid}x{v.grid} tokens, {v.codebook_size} codes; "
                   f"GPT {g.n_layer}x{g.n_embd}, {g.n_head} heads; CLIP {p.clip.name} ({p.clip.embed_dim}-d)")
    click.echo("CLIP presets (clip components: `train: {preset: NAME}`):")
    for name, p in CLIP_PRESETS.items():
        cfg = p.model_cfg
        click.echo(f"  {name:<22} tiny open_clip CLIP, {cfg['embed_dim']}-d, {cfg['vision_cfg']['image_size']}px, "
                   f"text context {cfg['text_cfg']['context_length']}")


def _flat(tree: dict, prefix: str = ""):
    """(dotted key, value) pairs of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _ls_one(name: str, registries) -> None:
    """Each entry called `name`, with its arguments (a component kind's are those of its `train:`)."""
    from bench.registry import describe_args

    from reference.clip import PRESETS as CLIP_PRESETS
    from reference.configs import PRESETS

    found = [(title, reg.get(name)) for title, reg in registries if name in reg]
    presets = [(what, table[name]) for what, table in (("preset", PRESETS), ("CLIP preset", CLIP_PRESETS))
               if name in table]
    if not found and not presets:
        fail(f"nothing is called {name!r}; `bench ls` lists the datasets, systems, metrics, component kinds "
             f"and presets")
    for what, preset in presets:
        click.echo(f"{what} {name}:")
        for key, value in _flat(dataclasses.asdict(preset)):
            click.echo(f"  {key:<34} {value}")
    for title, e in found:
        where = "train:" if title == "component kinds" else "args:"
        click.echo(f"{title[:-1]} {e.name}: {e.description}{_trains_on(e)}")
        rows = describe_args(e.args)
        if not rows:
            click.echo("  (no arguments)")
            continue
        click.echo(f"  {where}")
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            click.echo("    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + ("  " + r[3] if r[3] else ""))


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--latex", "want_latex", is_flag=True, help="also print LaTeX")
@click.option("--paper", is_flag=True, help="the papers' comparison layout with paired claims, written to paper.md / "
                                           "paper.tex instead of results.md / results.tex")
def report(run_dir, want_latex, paper) -> None:
    """Re-print a run's tables; write results.md and results.tex beside them (with --paper: paper.md, paper.tex)."""
    from pathlib import Path

    from bench.api import UserError
    from bench.cache import atomic_write_text
    from bench.results import latex, load_per_caption, markdown, read_frame

    run_dir = Path(run_dir)
    if not (run_dir / "results.csv").exists() and not (run_dir / "results.parquet").exists():
        fail(f"{run_dir} has no results.csv: run `bench run SUITE --out {run_dir}` first")
    try:
        df = read_frame(run_dir)
        per_caption = load_per_caption(run_dir)
    except UserError as err:
        fail(str(err))
    if paper:
        from bench.paper import paper_table

        md, tex, stem = paper_table(df, per_caption), paper_table(df, per_caption, latex=True) + "\n", "paper"
    else:
        md, tex, stem = markdown(df, per_caption), latex(df, per_caption), "results"
    click.echo(md)  # the tables first: a run folder that cannot be written to still shows them
    if want_latex:
        click.echo("\n" + tex)
    try:
        atomic_write_text(run_dir / f"{stem}.md", md + "\n")
        atomic_write_text(run_dir / f"{stem}.tex", tex)
    except OSError as err:
        fail(f"printed, but cannot write {stem}.md / {stem}.tex into {run_dir}: {err.strerror}")
    click.echo(f"\nwrote {run_dir / (stem + '.md')} and {run_dir / (stem + '.tex')}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("baseline_csv", type=click.Path(dir_okay=False))
@click.option("--tolerances", type=click.Path(dir_okay=False), default=None,
              help="tolerance file (default: <baseline>.tolerances.yaml beside the baseline)")
def compare(run_dir, baseline_csv, tolerances) -> None:
    """Exit 0 if every gated number of RUN_DIR is within tolerance of BASELINE_CSV, 1 if one is not, 2 on bad input."""
    from bench.api import UserError
    from bench.gates import compare_run

    try:
        ok, table = compare_run(run_dir, baseline_csv, tolerances)
    except UserError as err:
        fail(str(err))
    click.echo(table)
    sys.exit(0 if ok else 1)


@cli.command(name="build-item", hidden=True)
@click.argument("suite_path", metavar="SUITE")
@click.option("--item", required=True, metavar="KIND:NAME", help="component:NAME or system:ALIAS")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), required=True)
def build_item(suite_path, item, overrides, device, threads) -> None:
    """(internal) Train one component or system of SUITE into BENCH_CACHE: a `bench run --build-workers` worker."""
    import torch

    from bench.api import UserError
    from bench.build import Builder
    from bench.cache import cache_dir
    from bench.datasets.base import build_dataset
    from bench.suite import load_suite

    kind, _, name = item.partition(":")
    try:
        if kind not in ("component", "system") or not name:
            raise UserError(f"--item {item!r}: expected component:NAME or system:ALIAS")
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        suite = load_suite(suite_path, overrides)
        builder = Builder(suite, build_dataset(suite.dataset), device, str(cache_dir()), build_threads=threads)
        builder.build((kind, name))
    except UserError as err:
        fail(str(err))


@cli.command()
def info() -> None:
    """Print the runtime settings bench runs with (allocator, OpenMP spinning, threads, devices)."""
    import torch

    from bench.build import default_threads
    from bench.build_pool import default_build_workers, worker_threads
    from bench.cache import cache_dir

    from bench.cache import library_versions
    from reference.train import native_bf16

    flushed = torch.set_flush_denormal(True)  # as bench run does; False where the CPU cannot
    for k in PROCESS_ENV:
        click.echo(f"{k}={os.environ.get(k, '(unset)')}")
    click.echo(f"flush_denormal={flushed}")
    click.echo(f"threads={default_threads()}")
    workers = default_build_workers("cpu")
    click.echo(f"build_workers={workers} (threads each: {worker_threads(workers, default_threads())})")
    bf16 = native_bf16("cpu")
    click.echo(f"native_bf16(cpu)={bf16} (GPT train precision auto -> {'bf16' if bf16 else 'fp32'} on the CPU; "
               "the cache key names it)")
    click.echo(f"cuda_available={torch.cuda.is_available()}")
    click.echo("libraries=" + " ".join(f"{k}={v}" for k, v in library_versions().items()))
    click.echo(f"BENCH_CACHE={cache_dir()}")


def _interrupt_on_sigterm() -> None:
    """SIGTERM (`kill`, `timeout`, a cancelled CI job) stops a run as Ctrl-C does: the cleanup that stops build
    workers and generation shards and removes unfinished cache folders runs, instead of leaving them running."""

    def interrupt(signum, frame):
        raise Signalled(signum)

    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    from bench.api import UserError

    ensure_process_env()
    _interrupt_on_sigterm()
    from bench.cli_cache import cache
    from bench.cli_convert import convert
    from bench.cli_data import data

    cli.add_command(data)
    cli.add_command(convert)
    cli.add_command(cache)
    try:
        cli(prog_name="bench")
    except UserError as err:  # one the commands do not catch themselves (a plugin that fails to load, say)
        fail(str(err))


if __name__ == "__main__":
    main()
