"""The ``fundguard`` command line (CONTRACT.md §7).

Each command is a thin shell around a function of the package that does the work; the
heavy modules are imported inside the commands so that ``fundguard --help`` stays quick.
Bad input ends with a clear message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from serve.settings import Settings

if TYPE_CHECKING:
    from rules.base import RuleBase

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
@click.option(
    "--store",
    "to_store",
    is_flag=True,
    help="also replace the store's watch list with the patients and institutions flagged, "
    "and file the flags as cases for inspectors (never twice for one entity and pattern)",
)
def screen(data_dir: Path, out_dir: Path, memory_limit: str, to_store: bool) -> None:
    """Screen a whole history: OUT/flags.parquet, OUT/flags.csv and OUT/groups.parquet."""
    from serve import blacklist, cases, watchlist
    from serve.screening import screen as run_screening
    from serve.store import create_store_engine, store_exists, upgrade

    _require_valid(data_dir)
    settings = Settings()
    if to_store:
        upgrade(settings.store_url)
    # the black list is kept in the store (none when there is no store yet)
    engine = create_store_engine(settings.store_url) if store_exists(settings.store_url) else None
    try:
        listed = blacklist.listed_ids(engine) if engine is not None else set()
        started = time.perf_counter()
        result = run_screening(data_dir, out_dir, memory_limit=memory_limit, blacklist=listed)
        seconds = time.perf_counter() - started
        click.echo(f"{len(result.flags)} flag(s) in {seconds:.1f} s -> {result.flags_path}")
        for pattern, count in result.counts().items():
            click.echo(f"  {pattern:<28}{count:>8}")
        if not to_store or engine is None:
            return
        with engine.begin() as conn:  # the watch list and the cases, together or not at all
            kept = watchlist.replace(conn, watchlist.entries(result.flags, result.members))
            filed = cases.file_screening(conn, result.flags, result.members)
    finally:
        if engine is not None:
            engine.dispose()
    click.echo(f"watch list in {settings.store_url}: {kept} entr(y/ies)")
    click.echo(
        f"cases: {filed.cases_opened} opened, {filed.cases_touched} given "
        f"{filed.flags_added} new flag(s), {filed.reopened} reopened"
    )


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
def load(data_dir: Path) -> None:
    """Load the contract tables of DIR into the store the scorer uses (idempotent)."""
    from serve.loading import load_folder

    _require_valid(data_dir)
    settings = Settings()
    added = load_folder(data_dir, settings.store_url)
    click.echo(f"loaded {data_dir} into {settings.store_url}: {added}")


@main.group("blacklist")
def blacklist_group() -> None:
    """The black list of institutions (kept in the store)."""


@blacklist_group.command("add")
@click.argument("institution_id")
@click.option("--reason", required=True, help="why, in words an inspector can read")
def blacklist_add(institution_id: str, reason: str) -> None:
    from serve import blacklist
    from serve.store import create_store_engine, upgrade

    settings = Settings()
    upgrade(settings.store_url)
    engine = create_store_engine(settings.store_url)
    try:
        added = blacklist.add(engine, institution_id, reason)
    finally:
        engine.dispose()
    click.echo(f"{institution_id} {'listed' if added else 'was listed already'}")


@blacklist_group.command("remove")
@click.argument("institution_id")
def blacklist_remove(institution_id: str) -> None:
    from serve import blacklist
    from serve.store import create_store_engine

    engine = create_store_engine(Settings().store_url)
    try:
        removed = blacklist.remove(engine, institution_id)
    finally:
        engine.dispose()
    if not removed:
        raise click.ClickException(f"{institution_id} is not on the black list")
    click.echo(f"{institution_id} taken off the black list")


@blacklist_group.command("list")
def blacklist_list() -> None:
    from serve import blacklist
    from serve.store import create_store_engine

    engine = create_store_engine(Settings().store_url)
    try:
        rows = blacklist.listed(engine) if blacklist.listed_ids(engine) else []
    finally:
        engine.dispose()
    for institution, reason, added_at in rows:
        click.echo(f"{institution}\t{added_at.isoformat()}\t{reason}")
    click.echo(f"{len(rows)} institution(s) on the black list")


@main.group("cases")
def cases_group() -> None:
    """The inspectors' cases (kept in the store)."""


@cases_group.command("labels")
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="FILE.parquet or FILE.csv",
)
def cases_labels(out_file: Path) -> None:
    """Write the inspectors' verdicts as the contract's labels table (for retraining)."""
    from serve import cases
    from serve.store import create_store_engine, store_exists

    settings = Settings()
    if not store_exists(settings.store_url):
        raise click.ClickException(f"no store at {settings.store_url}")
    engine = create_store_engine(settings.store_url)
    try:
        written = cases.export_labels(engine, out_file)
    finally:
        engine.dispose()
    click.echo(f"{written} label(s) -> {out_file}")


@cases_group.command("recalibrate")
@click.option(
    "--prior-strength",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="the Beta prior's weight in verdicts: a flag's own score counts as this many",
)
@click.option(
    "--min-bin-verdicts",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="split a pattern's flags by score only into bins of at least this many verdicts",
)
def cases_recalibrate(prior_strength: int, min_bin_verdicts: int) -> None:
    """Calibrate the flags' probabilities by the verdicts so far (per pattern and score bin)
    and re-prioritise the open cases."""
    from serve import cases
    from serve.store import create_store_engine, store_exists

    settings = Settings()
    if not store_exists(settings.store_url):
        raise click.ClickException(f"no store at {settings.store_url}")
    engine = create_store_engine(settings.store_url)
    try:
        with engine.begin() as conn:
            done = cases.recalibrate(
                conn, prior_strength=prior_strength, min_bin_verdicts=min_bin_verdicts
            )
    finally:
        engine.dispose()
    click.echo("pattern\tscores from\tverdicts\tconfirmed\tprobability at the bin's top score")
    for of_pattern in done.calibration.bins.values():
        for b in of_pattern:
            click.echo(
                f"{b.pattern}\t{b.low:.4f}\t{b.verdicts}\t{b.confirmed}\t{b.probability(b.high)}"
            )
    click.echo(
        f"{done.reprioritised} of {done.open_cases} open case(s) re-prioritised "
        f"(prior {prior_strength} verdicts at the flag's score)"
    )


@main.group()
def keys() -> None:
    """API keys of the scorer (roles: settlement, inspector, admin)."""


@keys.command("create")
@click.option("--role", type=click.Choice(("settlement", "inspector", "admin")), required=True)
@click.option("--region", "regions", multiple=True, help="a region an inspector may see")
@click.option("--label", default="", help="whose key it is, in words")
def keys_create(role: str, regions: tuple[str, ...], label: str) -> None:
    """Make a key; it is printed once, on the last line, and never stored."""
    from serve.keys import Role, create_key
    from serve.store import create_store_engine, upgrade

    settings = Settings()
    upgrade(settings.store_url)
    engine = create_store_engine(settings.store_url)
    try:
        key = create_key(engine, Role(role), regions, label)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"a {role} key{' for ' + ', '.join(regions) if regions else ''}; keep it now:")
    click.echo(key)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part between ``fg_`` and the next ``_``)."""
    from serve.keys import revoke_key
    from serve.store import create_store_engine

    engine = create_store_engine(Settings().store_url)
    try:
        revoked = revoke_key(engine, key_id)
    finally:
        engine.dispose()
    if not revoked:
        raise click.ClickException(f"no live key {key_id}")
    click.echo(f"key {key_id} revoked")


@main.group()
def users() -> None:
    """Accounts of the inspectors' web pages (/ui): inspectors (their regions) and admins."""


@users.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(("inspector", "admin")), required=True)
@click.option("--region", "regions", multiple=True, help="a region an inspector may see")
@click.option("--name", "display_name", default="", help="the name the pages show")
@click.option(
    "--password-stdin", is_flag=True, help="read the password from standard input (one line)"
)
def users_create(
    username: str, role: str, regions: tuple[str, ...], display_name: str, password_stdin: bool
) -> None:
    """Make an account; the password is asked for twice, hidden (or read from stdin)."""
    from serve.keys import Role
    from serve.store import create_store_engine, upgrade
    from serve.web.accounts import AccountError, create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    settings = Settings()
    upgrade(settings.store_url)
    engine = create_store_engine(settings.store_url)
    try:
        user = create_user(
            engine, username, password, role=Role(role), regions=regions,
            display_name=display_name,
        )  # fmt: skip
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    where = f" for {', '.join(sorted(user.regions))}" if user.regions else ""
    click.echo(f"{user.role.value} {user.username} ({user.display_name}){where}")


@users.command("list")
def users_list() -> None:
    """Every account: name, role, regions, active or disabled."""
    from serve.store import create_store_engine, upgrade
    from serve.web.accounts import list_users

    settings = Settings()
    upgrade(settings.store_url)
    engine = create_store_engine(settings.store_url)
    try:
        found = list_users(engine)
    finally:
        engine.dispose()
    for u in found:
        state = "active" if u.active else "disabled"
        regions = ",".join(sorted(u.regions)) or "*"
        click.echo(f"{u.username}\t{u.role.value}\t{regions}\t{state}\t{u.display_name}")
    click.echo(f"{len(found)} account(s)")


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable an account: it signs in no more and its sessions end now."""
    from serve.store import create_store_engine, upgrade
    from serve.web.accounts import disable_user

    settings = Settings()
    upgrade(settings.store_url)
    engine = create_store_engine(settings.store_url)
    try:
        disabled = disable_user(engine, username)
    finally:
        engine.dispose()
    if not disabled:
        raise click.ClickException(f"no active account {username}")
    click.echo(f"{username} disabled; its sessions ended")


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
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="info logs every decision (one JSON line each, with its settlement id)",
)
def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Run the scorer (CONTRACT.md §6) over the configured store."""
    import uvicorn

    from serve.logs import log_config
    from serve.metrics import multiprocess_directory
    from serve.store import upgrade

    settings = Settings()
    upgrade(settings.store_url)
    click.echo(f"scorer on http://{host}:{port} over {settings.store_url}", err=True)
    # several workers share their metrics through files, so that /metrics answers for all
    with multiprocess_directory(workers):
        uvicorn.run(
            "serve.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=log_config(log_level.upper()),
        )


@main.command()
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--scale", type=click.Choice(SCALES), default="small", show_default=True)
def demo(seed: int, scale: str) -> None:
    """The main job on the embedded defaults: simulate a province, validate it, load it into
    the store the scorer uses, screen it (its watch list into the store), evaluate the
    screening against the province's truth, and train, register and promote the settlement
    model the scorer loads."""
    settings = Settings()
    province = settings.data_dir / "province"
    ctx = click.get_current_context()
    ctx.invoke(simulate, out_dir=province, seed=seed, scale=scale, fmt="parquet")
    ctx.invoke(validate, data_dir=province)
    ctx.invoke(load, data_dir=province)
    screened = settings.data_dir / "screen"
    ctx.invoke(screen, data_dir=province, out_dir=screened, memory_limit="4GB", to_store=True)
    ctx.invoke(evaluate, data_dir=province, flags_dir=screened)
    ctx.invoke(train, data_dir=province, do_register=True, do_promote=True, memory_limit="4GB")
    import orjson

    from serve.demo import demo_inspector, example_request
    from serve.keys import Role, create_key
    from serve.store import create_store_engine

    example = settings.data_dir / "example-settlement.json"
    example.write_bytes(orjson.dumps(example_request(province), option=orjson.OPT_INDENT_2))
    engine = create_store_engine(settings.store_url)
    try:
        key = create_key(engine, Role.SETTLEMENT, label="demo")
        inspector, password, region = demo_inspector(engine)
    finally:
        engine.dispose()
    click.echo(f"the province is in {province.resolve()}")
    click.echo(f"its flags are in {screened.resolve() / 'flags.parquet'} (and flags.csv)")
    click.echo(f"the store is {settings.store_url}")
    click.echo("start the scorer with `fundguard serve`, then try a settlement:")
    click.echo(
        "  curl -s -X POST http://127.0.0.1:8000/v1/score -H 'Content-Type: application/json'"
        f" -H 'Authorization: Bearer {key}' -d @{example.resolve()}"
    )
    click.echo("(a settlement-system key made for the demo; more with `fundguard keys create`)")
    click.echo(
        f"the inspectors' pages: http://127.0.0.1:8000/ui/ as {inspector}, password {password}"
        f" (an inspector of region {region}, the region with the most cases; shown once,"
        " more accounts with `fundguard users create`)"
    )


@main.group()
def rules() -> None:
    """The rule base (规则库): list it, check and test a rule file, backtest a change."""


def _rule_file(path: Path) -> RuleBase:
    """The rule base in ``path``, or a clear refusal naming every problem."""
    from rules.base import RuleFileError, load_rulebase

    try:
        return load_rulebase(path)
    except RuleFileError as error:
        for problem in error.problems:
            click.echo(f"{path}: {problem}", err=True)
        raise click.ClickException(
            f"{path}: {len(error.problems)} problem(s); the rule file is refused"
        ) from None
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror or error}") from None


def _stamp(rulebase: RuleBase) -> str:
    return f"version {rulebase.version}, sha256 {rulebase.checksum[:12]}"


@rules.command("list")
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="a rule file instead of the rule base in force",
)
def rules_list(path: Path | None) -> None:
    """List the rules of the rule base in force (or of --file)."""
    from rules.base import load_rulebase

    rulebase = _rule_file(path) if path else load_rulebase()
    click.echo(f"{rulebase.source}: {len(rulebase.rules)} rule(s), {_stamp(rulebase)}")
    for rule in rulebase.rules:
        state = "" if rule.enabled else "  (disabled)"
        click.echo(
            f"  {rule.id:<8}{rule.template.name:<26}{rule.pattern:<26}"
            f"{rule.action.value:<8}{rule.severity.value:<8}{rule.message}{state}"
        )


@rules.command("check")
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False))
def rules_check(path: Path) -> None:
    """Validate a rule file: every problem named by rule and field, non-zero exit if any."""
    rulebase = _rule_file(path)
    examples = sum(len(rule.examples) for rule in rulebase.rules)
    click.echo(
        f"{path}: {len(rulebase.rules)} rule(s) and {examples} example(s) are valid "
        f"({_stamp(rulebase)})"
    )


@rules.command("test")
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="show the examples that pass too")
def rules_test(path: Path, verbose: bool) -> None:
    """Run every rule's examples: each hit must fire, each no_hit must not."""
    from rules.examples import run_examples

    rulebase = _rule_file(path)
    results = run_examples(rulebase)
    failed = [r for r in results if not r.passed]
    for result in results if verbose else failed:
        click.echo(str(result), err=not result.passed)
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(results)} example(s) failed in {path}: "
            + ", ".join(f"{r.rule_id} {r.example.label}" for r in failed)
        )
    click.echo(f"{path}: all {len(results)} example(s) of {len(rulebase.rules)} rule(s) pass")


@rules.command("backtest")
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
@click.option("--memory-limit", default="4GB", show_default=True, help="DuckDB's memory limit")
def rules_backtest(path: Path, data_dir: Path, memory_limit: str) -> None:
    """Which past settlements in DIR the rule file FILE would flag differently from the
    rule base in force: per rule and per settlement, added and removed."""
    from features.batch import open_history
    from rules.base import load_rulebase
    from rules.batch import backtest

    candidate = _rule_file(path)
    in_force = load_rulebase()
    _require_valid(data_dir)
    started = time.perf_counter()
    con = open_history(data_dir, memory_limit=memory_limit)
    try:
        result = backtest(con, in_force, candidate)
    finally:
        con.close()
    seconds = time.perf_counter() - started
    click.echo(f"in force:  {in_force.source} ({_stamp(in_force)})")
    click.echo(f"candidate: {path} ({_stamp(candidate)})")
    click.echo(f"over {data_dir} in {seconds:.1f} s")
    click.echo(
        f"  {'rule':<8}{'pattern':<26}{'in force':>9}{'candidate':>10}{'added':>7}{'removed':>8}"
    )
    for diff in result.rules:
        before = "-" if diff.in_force is None else str(diff.in_force)
        after = "-" if diff.candidate is None else str(diff.candidate)
        click.echo(
            f"  {diff.rule_id:<8}{diff.pattern:<26}{before:>9}{after:>10}"
            f"{len(diff.added):>7}{len(diff.removed):>8}"
        )
    click.echo(
        f"flags: {result.count('added')} added, {result.count('removed')} removed, "
        f"{result.count('action')} with another action"
    )
    for diff in result.rules:
        for settlement_id in diff.added:
            click.echo(f"  + {settlement_id}  {diff.rule_id}  {diff.pattern}")
        for settlement_id in diff.removed:
            click.echo(f"  - {settlement_id}  {diff.rule_id}  {diff.pattern}")
    for change in result.flags:
        before = change.before.value if change.before else "none"
        after = change.after.value if change.after else "none"
        click.echo(
            f"  flag {change.kind:<8}{change.settlement_id}  {change.pattern}: "
            f"{before} -> {after} ({', '.join(change.rule_ids)})"
        )


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--flags",
    "flags_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="a screening's output folder (flags.parquet, groups.parquet)",
)
def evaluate(data_dir: Path, flags_dir: Path) -> None:
    """Score a screening's flags against a simulated province's truth, per pattern:
    precision, recall, average precision, precision@k, look-alikes flagged. Writes the
    table (JSON, markdown) and PR curves (PNG) into FLAGS/evaluation/."""
    from models.evaluate import evaluate as run_evaluation

    try:
        result = run_evaluation(data_dir, flags_dir, flags_dir / "evaluation")
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    click.echo(result.to_markdown(), nl=False)
    click.echo(f"table and {len(result.files) - 2} PR curve(s) in {flags_dir / 'evaluation'}")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--register", "do_register", is_flag=True, help="register the model and make it challenger"
)
@click.option(
    "--promote",
    "do_promote",
    is_flag=True,
    help="register, then make it champion if it beats the champion (implies --register)",
)
@click.option("--memory-limit", default="4GB", show_default=True, help="DuckDB's memory limit")
def train(data_dir: Path, do_register: bool, do_promote: bool, memory_limit: str) -> None:
    """Train the settlement model on the verdicts (labels) of DIR, time-ordered, and log
    the run to MLflow (FUNDGUARD_MLFLOW_TRACKING_URI; a store in the data folder if unset)."""
    import tempfile

    from models import registry
    from models.supervised import train_on_history, validation_plots

    _require_valid(data_dir)
    tracking_uri = Settings().tracking_uri
    try:
        result = train_on_history(data_dir, memory_limit=memory_limit)
    except ValueError as error:
        raise click.ClickException(f"{data_dir}: {error}") from None
    feature_set = result.model.feature_set
    with tempfile.TemporaryDirectory(prefix="fundguard-plots-") as tmp:
        plots = validation_plots(result, Path(tmp))
        logged = registry.log_training_run(
            result, tracking_uri=tracking_uri, plots=plots, tags={"data": str(data_dir)}
        )
    click.echo(f"run {logged.run_id} in {tracking_uri}")
    click.echo(
        f"  trained on {len(result.train.frame)} verdicts, validated on the "
        f"{len(result.valid.frame)} later ones ({result.seconds:.1f} s), "
        f"feature set {feature_set.tag} ({feature_set.fingerprint})"
    )
    for name in ("auc", "average_precision", "brier", "precision_at_10", "precision_at_20"):
        click.echo(f"  {name:<20}{result.metrics[name]:.3f}")
    if not (do_register or do_promote):
        return
    version = registry.register(logged, tracking_uri=tracking_uri, feature_set=feature_set.tag)
    click.echo(f"registered {registry.MODEL_NAME} version {version} as {registry.CHALLENGER}")
    if do_promote:
        decision = registry.promote_if_better(
            tracking_uri,
            version,
            result.valid.features,
            result.valid.labels,
            candidate_score=result.metrics["average_precision"],
        )
        against = (
            f" (champion version {decision.champion_version}: {decision.champion:.3f})"
            if decision.champion is not None
            else ""
        )
        verb = "promoted to" if decision.promoted else "not promoted to"
        click.echo(
            f"version {version} {verb} {registry.CHAMPION}: {decision.reason}; "
            f"{decision.metric} {decision.candidate:.3f}{against}"
        )


@main.group()
def credit() -> None:
    """Credit (医保信用) of institutions, patients and doctors, kept in the store."""


@credit.command("check")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def credit_check(path: Path) -> None:
    """Validate a credit scheme file; name every problem and exit non-zero if any."""
    from rules.credit import CreditSchemeError, load_scheme

    try:
        scheme = load_scheme(path)
    except CreditSchemeError as error:
        raise click.ClickException(str(error)) from None
    grades = ", ".join(f"{g.name}≥{g.min_score}" for g in scheme.grades)
    click.echo(f"{path}: credit scheme {scheme.version} (sha256 {scheme.checksum[:12]}): {grades}")


@credit.command("recompute")
def credit_recompute() -> None:
    """Rebuild every credit account from the stored decisions and verdicts."""
    from rules.credit import load_scheme
    from serve.credit import recompute
    from serve.store import create_store_engine, upgrade

    settings = Settings()
    upgrade(settings.store_url)
    engine = create_store_engine(settings.store_url)
    try:
        started = time.perf_counter()
        done = recompute(engine, load_scheme(Settings().credit_file))
    finally:
        engine.dispose()
    click.echo(
        f"recomputed {done.accounts} account(s) and {done.events} event(s) from "
        f"{done.decisions} decision(s) and {done.verdicts} verdict(s) "
        f"in {time.perf_counter() - started:.1f} s"
    )


@credit.command("show")
@click.argument("entity_type", type=click.Choice(("institution", "patient", "doctor")))
@click.argument("entity_id")
@click.option("--limit", default=20, show_default=True, type=int, help="events to list")
def credit_show(entity_type: str, entity_id: str, limit: int) -> None:
    """An account's score, grade and latest events, in words."""
    from rules.credit import Party, load_scheme
    from serve.credit import explain
    from serve.store import create_store_engine, store_exists

    settings = Settings()
    if not store_exists(settings.store_url):
        raise click.ClickException(f"no store at {settings.store_url}")
    engine = create_store_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            shown = explain(
                conn,
                load_scheme(Settings().credit_file),
                Party(entity_type),
                entity_id,
                limit=limit,
            )
    finally:
        engine.dispose()
    click.echo(f"{entity_type} {entity_id}: {shown.score} ({shown.grade})")
    click.echo(f"  {shown.summary}")
    for e in shown.events:
        click.echo(f"  {e.at:%Y-%m-%d %H:%M}  {e.points:+5d}  {e.kind:<9} {e.source}  {e.reason}")
