"""`revelio`: the command line around the pipeline (the stages themselves run through DVC)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from pipeline.backbones.registry import BACKBONES
from pipeline.config import DATASETS, ConfigError, load_params

app = typer.Typer(
    help="Interpret diffusion models: cached activations, k-SAEs, Diff-C and the paper's figures.\n\n"
    "Run the pipeline with `dvc repro`; these commands inspect and check it.",
    no_args_is_help=True,
    add_completion=False,
)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="Parameters file to read.")


@app.command()
def check(params: Path = ParamsOpt) -> None:
    """Validate the parameters file and print the resolved key (dataset, model, layer, t)."""
    try:
        p = load_params(params)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{params}: ok — dataset={p.dataset} model={p.model} layer={p.layer} t={p.t} prompt={p.prompt}")


@app.command("params")
def show_params(
    params: Path = ParamsOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print every parameter with its default filled in."""
    try:
        p = load_params(params)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
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


if __name__ == "__main__":
    app()
