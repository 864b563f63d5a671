"""The ``fundguard`` command line (CONTRACT.md §7).

Each command is a thin shell around a function of the package that does the work; the
heavy modules are imported inside the commands so that ``fundguard --help`` stays quick.
Bad input ends with a clear message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from serve.settings import Settings

SCALES = ("small", "medium", "large")


def _progress(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fundguard")
def main() -> None:
    """fundguard: guards a medical-insurance fund (医保基金) against fraud."""


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--scale", type=click.Choice(SCALES), default="small", show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(("parquet", "csv")), default="parquet", show_default=True
)
def simulate(out_dir: Path, seed: int, scale: str, fmt: str) -> None:
    """Write a synthetic province (the contract's tables) and its truth into OUT."""
    from features.simulate import simulate as run_simulation

    summary = run_simulation(out_dir, seed=seed, scale=scale, progress=_progress, fmt=fmt)
    click.echo(f"simulated a {scale} province (seed {seed}) in {summary.seconds:.1f} s: {out_dir}")
    for table, rows in summary.counts.items():
        click.echo(f"  {table:<28}{rows:>12,}")
    click.echo("planted (truth/flags.parquet):")
    for pattern, rows in summary.patterns.items():
        click.echo(f"  {pattern:<28}{rows:>12,}")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
def validate(data_dir: Path) -> None:
    """Check a folder of contract tables; name every problem and exit non-zero if any."""
    from features.load import validate_folder

    if not data_dir.is_dir():
        raise click.ClickException(f"{data_dir}: no such folder")
    started = time.perf_counter()
    problems = validate_folder(data_dir)
    seconds = time.perf_counter() - started
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {data_dir} ({seconds:.1f} s)", err=True)
        sys.exit(1)
    click.echo(f"{data_dir}: every table conforms to the contract ({seconds:.1f} s)")


def _require_valid(data_dir: Path) -> None:
    from features.load import validate_folder

    if not data_dir.is_dir():
        raise click.ClickException(f"{data_dir}: no such folder")
    problems = validate_folder(data_dir)
    if problems:
        for problem in problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(problems)} problem(s) in {data_dir}; nothing was done")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--memory-limit", default="4GB", show_default=True, help="DuckDB's memory limit")
def screen(data_dir: Path, out_dir: Path, memory_limit: str) -> None:
    """Screen a whole history: OUT/flags.parquet, OUT/flags.csv and OUT/groups.parquet."""
    from serve.screening import screen as run_screening

    _require_valid(data_dir)
    started = time.perf_counter()
    result = run_screening(data_dir, out_dir, memory_limit=memory_limit)
    seconds = time.perf_counter() - started
    click.echo(f"{len(result.flags)} flag(s) in {seconds:.1f} s -> {result.flags_path}")
    for pattern, count in result.counts().items():
        click.echo(f"  {pattern:<28}{count:>8}")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
def load(data_dir: Path) -> None:
    """Load the contract tables of DIR into the store the scorer uses (idempotent)."""
    from serve.loading import load_folder

    _require_valid(data_dir)
    settings = Settings()
    added = load_folder(data_dir, settings.store_url)
    click.echo(f"loaded {data_dir} into {settings.store_url}: {added}")


@main.group()
def db() -> None:
    """The store's schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations to the configured store."""
    from serve.store import upgrade

    settings = Settings()
    upgrade(settings.store_url)
    click.echo(f"{settings.store_url} is at the newest schema")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Run the scorer (CONTRACT.md §6) over the configured store."""
    import uvicorn

    from serve.store import upgrade

    settings = Settings()
    upgrade(settings.store_url)
    click.echo(f"scorer on http://{host}:{port} over {settings.store_url}", err=True)
    uvicorn.run(
        "serve.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


@main.command()
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--scale", type=click.Choice(SCALES), default="small", show_default=True)
def demo(seed: int, scale: str) -> None:
    """The main job on the embedded defaults: simulate a province, validate, screen and
    load it into the store the scorer uses."""
    settings = Settings()
    province = settings.data_dir / "province"
    ctx = click.get_current_context()
    ctx.invoke(simulate, out_dir=province, seed=seed, scale=scale, fmt="parquet")
    ctx.invoke(validate, data_dir=province)
    screened = settings.data_dir / "screen"
    ctx.invoke(screen, data_dir=province, out_dir=screened, memory_limit="4GB")
    ctx.invoke(load, data_dir=province)
    import orjson

    from serve.demo import example_request

    example = settings.data_dir / "example-settlement.json"
    example.write_bytes(orjson.dumps(example_request(province), option=orjson.OPT_INDENT_2))
    click.echo(f"the province is in {province.resolve()}")
    click.echo(f"its flags are in {screened.resolve() / 'flags.parquet'} (and flags.csv)")
    click.echo(f"the store is {settings.store_url}")
    click.echo("start the scorer with `fundguard serve`, then try a settlement:")
    click.echo(
        "  curl -s -X POST http://127.0.0.1:8000/v1/score -H 'Content-Type: application/json'"
        f" -d @{example.resolve()}"
    )
