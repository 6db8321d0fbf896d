"""`revelio`: the command line around the pipeline (the stages themselves run through DVC)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import typer
import yaml

from pipeline.backbones.registry import BACKBONES
from pipeline.config import DATASETS, load_params
from pipeline.errors import ConfigError
from pipeline.files import human_bytes

app = typer.Typer(
    help="Interpret diffusion models: cached activations, k-SAEs, Diff-C and the paper's figures.\n\n"
    "Run the pipeline with `dvc repro`; these commands inspect and check it.",
    no_args_is_help=True,
    add_completion=False,
)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="Parameters file to read.")


def _params_or_exit(path: Path):
    """The validated params, or the one-line config error and exit status 2."""
    try:
        return load_params(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def check(params: Path = ParamsOpt) -> None:
    """Validate the parameters file and print the resolved key (dataset, model, layer, t)."""
    p = _params_or_exit(params)
    typer.echo(f"{params}: ok — dataset={p.dataset} model={p.model} layer={p.layer} t={p.t} prompt={p.prompt}")


@app.command("params")
def show_params(
    params: Path = ParamsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print every parameter with its default filled in."""
    p = _params_or_exit(params)
    data = p.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the backbones, their weights and the layers that can be tapped."""
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "weights": s.hub_id or ("trained by the model stage" if s.embedded else "random, built from config"),
            "T": s.num_train_timesteps,
            "layers": s.layer_names(),
        }
        for s in BACKBONES.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        layers = r["layers"]
        shown = ", ".join(layers) if len(layers) <= 6 else f"{layers[0]} … {layers[-1]} ({len(layers)})"
        typer.echo(f"{r['name']:<14} {r['family']:<5} T={r['T']:<5} {r['weights']}\n{'':<14} layers: {shown}")


@app.command()
def datasets() -> None:
    """List the datasets the `data` stage can build."""
    for name, domain in DATASETS.items():
        typer.echo(f"{name:<14} prompt domain: {domain}")


features_app = typer.Typer(help="Inspect the feature cache (features/).", no_args_is_help=True)
app.add_typer(features_app, name="features")
FeaturesRoot = typer.Option(Path("features"), "--root", help="The feature cache folder.")
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


@features_app.command("ls")
def features_ls(root: Path = FeaturesRoot, as_json: bool = JsonOpt) -> None:
    """Every cached store: key, shapes, size on disk, completeness."""
    from pipeline.features.inspect import find_stores, summary

    rows = [summary(p, root) for p in find_stores(root)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no feature stores under {root}/ (run `dvc repro`)")
        return
    for r in rows:
        state = "complete" if r["complete"] else f"INCOMPLETE (missing shards {r['missing_shards']})"
        main = "pooled" if r["kind"] == "features" else "latents"
        shapes = "  ".join(f"{s}:{a.get(main)}" for s, a in r["arrays"].items())
        typer.echo(f"{r['key']:<48} {human_bytes(r['bytes']):>9}  {state}\n    {main} {shapes}")


@features_app.command("info")
def features_info(key: str, root: Path = FeaturesRoot, as_json: bool = JsonOpt) -> None:
    """Arrays (dtype, chunks, shards, codecs) and provenance of one store."""
    from pipeline.errors import StoreError
    from pipeline.features.inspect import info, resolve_key

    try:
        data = info(resolve_key(key, root))
    except StoreError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"{data['path']}  ({'complete' if data['complete'] else 'incomplete'}, {data['shard_size']} samples/shard)")
    for name, a in data["arrays"].items():
        typer.echo(
            f"  {name:<16} {str(a['shape']):<22} {a['dtype']:<8} chunks {a['chunks']} "
            f"shards {a['shards']} codecs {'+'.join(a['codecs'])}"
        )
    typer.echo("provenance:")
    for k, v in data["provenance"].items():
        typer.echo(f"  {k}: {v}")


@features_app.command("show")
def features_show(
    key: str,
    index: int = typer.Option(..., "--index", "-i", help="Sample number within the split."),
    split: str = typer.Option("train", "--split", help="train or test."),
    root: Path = FeaturesRoot,
    as_json: bool = JsonOpt,
) -> None:
    """One sample: its image (manifest row, class) and its pooled vector's statistics."""
    from pipeline.errors import StoreError
    from pipeline.features.inspect import resolve_key, show

    try:
        data = show(resolve_key(key, root), split, index)
    except StoreError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(
        f"{split}[{index}]: manifest row {data['manifest_row']} view {data['view']}"
        + (f" — {data.get('class_name')} (label {data.get('label')})" if "label" in data else "")
    )
    typer.echo(f"  image: {data.get('image')}")
    for name in ("pooled", "latents"):
        if name in data:
            v = data[name]
            top = ", ".join(f"c{i}={x:.3g}" for i, x in v["top_channels"])
            typer.echo(
                f"  {name} ({v['dim']} values): mean {v['mean']:.4g} std {v['std']:.4g} "
                f"min {v['min']:.4g} max {v['max']:.4g} |x| {v['l2']:.4g}\n    top: {top}"
            )


sae_app = typer.Typer(help="Take fitted k-SAEs to SAELens or EleutherAI sparsify, and back.", no_args_is_help=True)
app.add_typer(sae_app, name="sae")


@sae_app.command("export")
def sae_export(
    out: Path = typer.Argument(..., help="Folder to write (replaced if it exists)."),
    to: str = typer.Option(..., "--to", help="saelens (SAE.load_from_disk) or sparsify (SparseCoder.load_from_disk)."),
    sae: Path | None = typer.Option(
        None, "--sae", help="A fitted k-SAE folder (default: models/sae/<dataset>/<model>/<control>/<layer>/t<t> of --params)."
    ),
    params: Path = ParamsOpt,
) -> None:
    """Write a k-SAE in SAELens' or sparsify's folder format (exact; their TopK applies ReLU, ours does not)."""
    from pipeline.interop.saes import export_sae

    folder = sae or _params_or_exit(params).key.sae_dir()
    if not (folder / "sae.safetensors").is_file():
        _fail(FileNotFoundError(f"{folder}: no fitted k-SAE here (run `dvc repro fit_sae`, or pass --sae)"))
    try:
        export_sae(folder, out, to)  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError) as exc:
        _fail(exc)
    typer.echo(f"{folder} → {out} ({to})")


@sae_app.command("import")
def sae_import(
    source: Path = typer.Argument(..., help="A SAELens or sparsify TopK SAE folder (format detected from its files)."),
    out: Path = typer.Argument(..., help="k-SAE folder to write (sae.safetensors + config.json; replaced if it exists)."),
) -> None:
    """Read a SAELens or sparsify TopK SAE into a k-SAE folder (refuses settings the k-SAE cannot hold)."""
    from pipeline.interop.saes import detect_format, import_sae

    try:
        fmt = detect_format(source)
        import_sae(source, out, fmt)
    except (OSError, ValueError, KeyError) as exc:
        _fail(exc)
    typer.echo(f"{source} ({fmt}) → {out}")


@app.command()
def classify(
    images: list[Path] = typer.Argument(..., help="Image files to classify."),
    params: Path = ParamsOpt,
    diffc: Path | None = typer.Option(
        None, "--diffc", help="A fitted Diff-C folder (default: models/diffc/<dataset>/<model>/<control>/<layer>/t<t>)."
    ),
    top: int = typer.Option(5, "--top", "-k", min=1, help="Classes to print per image."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, mps (default: extract.device)."),
    as_json: bool = JsonOpt,
) -> None:
    """Top classes per image: backbone features at the Diff-C's (layer, t), then Diff-C."""
    from pipeline.diffc.classify import classify as run
    from pipeline.diffc.classify import load_classifier
    from pipeline.diffc.fit import seed_dir
    from pipeline.errors import USER_ERRORS

    p = _params_or_exit(params)
    folder = diffc or seed_dir(p.key.diffc_dir(), p.diffc.seeds[0])
    if not (folder / "config.json").is_file():
        _fail(FileNotFoundError(f"{folder}: no fitted Diff-C here (run `dvc repro fit_diffc`, or pass --diffc)"))
    missing = [str(i) for i in images if not i.is_file()]
    if missing:
        _fail(FileNotFoundError(f"no such image file: {', '.join(missing)}"))
    try:
        clf = load_classifier(p, folder, device=device)
        preds = run(clf, images, k=top)
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps([{**pr.__dict__, "path": str(pr.path)} for pr in preds], indent=2))
        return
    for pr in preds:
        ranked = ", ".join(f"{c} {100 * q:.1f}%" for c, q in zip(pr.classes, pr.probs))
        typer.echo(f"{pr.path}: {ranked}  ({pr.seconds:.2f} s)")


@app.command()
def compare(
    folders: list[Path] = typer.Argument(
        None, help="Result folders (each with params.yaml and reports/metrics.json); default: this repo's DVC experiments."
    ),
    out: Path | None = typer.Option(
        Path("reports/compare"), "--out", help="Write each table as Markdown and CSV here ('' to skip)."
    ),
    all_commits: bool = typer.Option(False, "--all-commits", help="Experiments of every commit, not just HEAD's."),
    plot: bool = typer.Option(
        False, "--plot", help="Also draw accuracy and σ_label vs layer / vs t (PNG per table, into --out)."
    ),
    repo: Path | None = typer.Option(None, "--repo", help="The DVC repository whose experiments to read (default: here)."),
) -> None:
    """The paper's tables (by layer, timestep, model, prompt) for whatever was run, with the
    paper's own numbers beside matching configurations."""
    from pipeline.report.compare import (
        records_from_exp_show,
        records_from_folders,
        table_name,
        tables,
        to_csv,
        to_markdown,
    )

    try:
        if folders:
            records = records_from_folders(folders)
        else:
            import dvc.api

            rows = dvc.api.exp_show(repo=str(repo) if repo else None, num=10_000 if all_commits else 1)
            records = records_from_exp_show(_drop_stale_workspace(rows, (repo or Path(".")) / "dvc.lock"))
    except FileNotFoundError as exc:
        _fail(exc)
    found = tables(records)
    if not found:
        typer.echo(
            f"{len(records)} evaluated run(s), but no two differ in only one of dataset/model/layer/t/prompt: "
            "nothing to compare (queue a sweep: see the README)"
        )
        return
    for table in found:
        typer.echo(to_markdown(table))
        if out and str(out):
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{table_name(table)}.md").write_text(to_markdown(table))
            (out / f"{table_name(table)}.csv").write_text(to_csv(table))
    if plot:
        from pipeline.report.figures import plot_curves

        target = out if out and str(out) else Path("reports/compare")
        drawn = plot_curves(found, target)
        typer.echo(f"{len(drawn)} plot(s): " + ", ".join(str(p) for p in drawn))
    if out and str(out):
        typer.echo(f"{len(found)} table(s) written to {out}/")


def _drop_stale_workspace(rows: list[dict], lock_file: Path) -> list[dict]:
    """exp_show's rows without the workspace's when its metrics are another key's.

    While `dvc exp run -S layer=... -S t=...` runs in the workspace (or after params.yaml was
    edited without a repro), the workspace row pairs the new key's params with the previous
    run's reports/metrics.json. The metrics belong to the key whose Diff-C folder the
    workspace's dvc.lock has `evaluate` read; any other workspace key is dropped. (Here, not in
    pipeline.report.compare: that module is a dep of the render stage, and this is about
    DVC's workspace, not about tables.)
    """
    from pipeline.paths import Key

    try:
        stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    except OSError:
        return rows
    evaluated = {dep["path"] for dep in stages.get("evaluate", {}).get("deps", [])}
    kept = []
    for row in rows:
        if row.get("rev") == "workspace" and all(row.get(k) is not None for k in ("dataset", "model", "layer", "t")):
            key = Key(str(row["dataset"]), str(row["model"]), str(row["layer"]), int(row["t"]))
            if key.diffc_dir().as_posix() not in evaluated:
                typer.echo(f"(workspace skipped: its metrics are not {key}'s; dvc.lock's evaluate read another key)", err=True)
                continue
        kept.append(row)
    return kept


paper_app = typer.Typer(
    help="The paper's experiments, each one command with the paper's whole recipe (DVC experiments).",
    no_args_is_help=True,
)
app.add_typer(paper_app, name="paper")


def _paper_config(name: str):
    from pipeline.report.paper_configs import get_config

    try:
        return get_config(name)
    except LookupError as exc:
        _fail(exc)


@paper_app.command("list")
def paper_list() -> None:
    """Each configuration: what it reproduces, its cells, the paper's numbers, the expected cost."""
    from pipeline.report.paper_configs import CONFIGS

    for config in CONFIGS.values():
        known = [c.paper for c in config.cells if c.paper is not None]
        numbers = f"{len(known)} paper number(s)" if known else "paper numbers in its figure only"
        typer.echo(f"{config.name:<8} {config.what}\n         {len(config.cells)} cell(s), {numbers}; {config.cost}")


@paper_app.command("show")
def paper_show(name: str = typer.Argument(..., help="A configuration from `revelio paper list`.")) -> None:
    """The full recipe with each value's source, every cell with the paper's number, and the commands."""
    from pipeline.report.paper_configs import shell

    config = _paper_config(name)
    typer.echo(f"{config.name}: {config.what}\nexpected cost: {config.cost}\n\nrecipe (every cell):")
    # A cell's name holds its dataset, model, layer, t, prompt and size; other own values follow it.
    in_name = {"dataset", "model", "layer", "t", "prompt", "data.image_size"}
    shared = config.shared_recipe()
    for key, (value, source) in shared.items():
        if key not in in_name:
            typer.echo(f"  {key:<26} {value!s:<14} {source}")
    typer.echo("\ncells (paper's number beside each):")
    for cell in config.cells:
        paper = "–" if cell.paper is None else f"{cell.paper:g}"
        extra = [f"{k}={v} ({src})" for k, (v, src) in cell.recipe().items() if k not in shared and k not in in_name]
        typer.echo(f"  {cell.name:<58} {cell.metric} {paper}" + (f"; {', '.join(extra)}" if extra else ""))
    for note in dict.fromkeys(c.note for c in config.cells if c.note):
        typer.echo(f"\nnote: {note}")
    typer.echo("\ncommands:")
    for cmd in config.commands():
        typer.echo("  " + shell(cmd))


@paper_app.command("run")
def paper_run(
    name: str = typer.Argument(..., help="A configuration from `revelio paper list`."),
    queue: bool = typer.Option(False, "--queue", help="Queue the cells (`dvc queue start` runs them) instead of running now."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands only."),
) -> None:
    """Run (or queue) one DVC experiment per cell of the configuration; `revelio compare` then prints the tables."""
    config = _paper_config(name)
    _run_dvc_commands(
        list(config.commands(queue=queue)), dry_run,
        lambda i, code: f"cell {i} of {config.name} failed (exit {code}); the cells before it are kept",
    )
    if not dry_run:
        typer.echo("queued: run them with `dvc queue start`" if queue else "done: `revelio compare` prints the tables")


def _run_dvc_commands(cmds: list[list[str]], dry_run: bool, failure: Callable[[int, int], str]) -> None:
    """Echo and run each `dvc ...` command in turn (the dvc beside this interpreter when PATH has
    none); the first that fails stops with `failure(its number, exit status)`."""
    import subprocess

    from pipeline.report.paper_configs import shell
    from pipeline.report.sweeps import dvc_executable

    dvc = dvc_executable()
    for i, cmd in enumerate(cmds, 1):
        typer.echo(f"[{i}/{len(cmds)}] {shell(cmd)}")
        if not dry_run and (code := subprocess.call([dvc, *cmd[1:]])):
            typer.echo(f"error: {failure(i, code)}", err=True)
            raise typer.Exit(code)


@app.command()
def sweep(
    layers: str = typer.Option(..., "--layers", help="Comma-separated layers, e.g. bottleneck,up_ft0,up_ft1."),
    timesteps: str = typer.Option("25", "--t", help="Comma-separated timesteps, e.g. 25,100,250."),
    overrides: list[str] = typer.Option(
        [], "-S", "--set", help="KEY=VALUE for every experiment, as for `dvc exp run -S` (repeatable)."
    ),
    jobs: int = typer.Option(
        0, "--jobs", "-j", min=0, help="Queue workers run at once (`dvc queue start -j`); 0 = one per GPU, 1 on a CPU."
    ),
    prefix: str = typer.Option("sweep", "--name", help="Experiment name prefix: <name>-<layer>-t<t> (unique per commit)."),
    queue_only: bool = typer.Option(False, "--queue-only", help="Queue the experiments and stop (start them with `dvc queue start`)."),
    poll: float = typer.Option(10.0, "--poll", min=0.1, help="Seconds between queue checks while waiting."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands only."),
) -> None:
    """Queue one DVC experiment per (layer, t) and run them with N workers sharing one DVC cache;
    waits until all finish, then `revelio compare` prints the tables. On several GPUs each worker's
    stages take a GPU no other one holds."""
    import subprocess

    from pipeline.report.paper_configs import shell
    from pipeline.report.sweeps import (
        dvc_executable,
        experiment_name,
        queue_status,
        resolve_overrides,
        sweep_commands,
        wait_for,
        worker_env,
    )

    try:
        ts = [int(t) for t in timesteps.split(",") if t.strip()]
    except ValueError:
        _fail(ValueError(f"--t {timesteps!r}: timesteps are comma-separated integers"))
    names = [layer.strip() for layer in layers.split(",") if layer.strip()]
    # Every key checked now, as its experiment would run (-S overrides included: another model
    # has other layers), not by a worker minutes later.
    for layer, t in itertools.product(names, ts):
        try:
            resolve_overrides(Path("params.yaml"), [f"layer={layer}", f"t={t}", *overrides])
        except (ConfigError, ValueError) as exc:
            _fail(ValueError(f"layer={layer} t={t}: {exc}"))
    if jobs == 0:
        import torch

        jobs = max(1, torch.cuda.device_count())
    _run_dvc_commands(
        sweep_commands(names, ts, overrides, prefix), dry_run,
        lambda i, code: f"queueing experiment {i} failed (exit {code}); the ones before it stay queued",
    )
    start = [dvc_executable(), "queue", "start", "-j", str(jobs)]
    if queue_only or dry_run:
        typer.echo(f"then: {shell(['dvc', *start[1:]])}")
        return
    # The workers inherit this environment: the queued copies of the repo have no .venv.
    if code := subprocess.call(start, env=worker_env()):
        raise typer.Exit(code)
    exp_names = [experiment_name(prefix, layer, t) for layer, t in itertools.product(names, ts)]

    def report(counts) -> None:
        typer.echo("queue: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())))

    final = wait_for(exp_names, queue_status, poll_s=poll, report=report)
    failed = [name for name, state in final.items() if state != "Success"]
    if failed:
        typer.echo(f"error: {len(failed)} experiment(s) did not succeed: {', '.join(failed)} "
                   "(`dvc queue logs NAME` shows why)", err=True)
        raise typer.Exit(1)
    typer.echo(f"done: {len(exp_names)} experiments; `revelio compare` prints the tables")


@app.command("check-metrics")
def check_metrics_cmd(
    metrics: Path = typer.Option(Path("reports/metrics.json"), "--metrics", help="This run's metrics file."),
    against: Path = typer.Option(
        None, "--against", help="Reference metrics file (default: the committed one, git show HEAD:<metrics>)."
    ),
) -> None:
    """Check that a run reproduces the committed results: Diff-C top-1 within ±1.5 points, σ_label
    within ±0.15, and the trained backbone's held-out ε-MSE at t=25 below half the
    initialisation's. Exit 1 naming each metric that is off (CI runs this after `make repro`)."""
    from pipeline.report.reproduce import check_metrics, committed_metrics

    try:
        current = json.loads(metrics.read_text())
        reference = json.loads(against.read_text()) if against else committed_metrics(metrics)
    except (OSError, ValueError) as exc:
        _fail(exc)
    lines, failures = check_metrics(current, reference)
    for line in lines:
        typer.echo(line)
    if failures:
        for failure in failures:
            typer.echo(f"error: {failure}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{metrics}: reproduces {against or 'the committed metrics'} within tolerance")


if __name__ == "__main__":
    app()
