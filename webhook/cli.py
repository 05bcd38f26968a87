"""The `hoctap` command line. Each subcommand is a thin layer over a function that tests call directly."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from models.settings import Settings, get_settings


def _engine(settings: Settings):  # type: ignore[no-untyped-def]
    from models.db import make_engine

    return make_engine(settings.db_url)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from models import migrate

    engine = _engine(settings)
    migrate.upgrade(engine)
    print(f"Database is up to date ({engine.url.render_as_string(hide_password=True)}).")
    return 0


def cmd_criteria_score(args: argparse.Namespace, settings: Settings) -> int:
    from flows.criteria import CriteriaError, load_sets, score

    try:
        sets = load_sets(local=args.local or ())
    except CriteriaError as exc:
        print(json.dumps({"error": str(exc)}, ensure_ascii=False))
        return 2
    if args.title not in sets:
        print(json.dumps({"error": f"unknown title {args.title!r}", "titles": sorted(sets)}, ensure_ascii=False))
        return 2
    try:
        raw = Path(args.answers).read_text(encoding="utf-8") if args.answers != "-" else sys.stdin.read()
        answers = json.loads(raw)
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": f"cannot read answers: {exc}"}, ensure_ascii=False))
        return 2
    if not isinstance(answers, dict):
        print(json.dumps({"error": "answers must be a JSON object {criterion id: value}"}, ensure_ascii=False))
        return 2
    computed = answers.pop("_computed", None)
    result = score(sets[args.title], answers, computed if isinstance(computed, dict) else None)
    print(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
    return 0


def cmd_criteria_list(args: argparse.Namespace, settings: Settings) -> int:
    from flows.criteria import CriteriaError, load_sets

    try:
        sets = load_sets(local=args.local or ())
    except CriteriaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for title, cset in sorted(sets.items()):
        if args.title and title != args.title:
            continue
        print(f"{title}\t{cset.name}\tversion {cset.version}\t{len(cset.criteria)} criteria\t"
              f"max {cset.max_points}\tpass {cset.pass_rule.min_points}\tstatus {cset.status}")
        if args.title:
            for c in cset.criteria:
                print(f"  {c.id}\t{c.answer}\tmax {c.max_points}\t{c.status}\t{c.text}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.serve import serve

    return serve(settings, host=args.host, port=args.port, demo=not args.no_demo)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from bot.worker import run_worker

    return run_worker(settings, role=args.role, wake_fd=args.wake_fd, outbox_wake_fd=args.outbox_wake_fd,
                      parent_pid=args.parent_pid)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.demo import demo_command

    return demo_command(settings, reset=args.action == "reset")


def cmd_remind(args: argparse.Namespace, settings: Settings) -> int:
    from bot.scheduler import remind_command

    return remind_command(settings, args)


def cmd_officer_add(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.admin import officer_add_command

    return officer_add_command(settings, args)


def cmd_villages_import(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.admin import villages_import_command

    return villages_import_command(settings, args)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.admin import export_command

    return export_command(settings, args)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.backup import backup_command

    return backup_command(settings, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hoctap", description="hoctap — Gia đình học tập bots and review")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="web, webhooks or polling, scheduler and senders")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-demo", action="store_true", help="do not seed the demo commune")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="inbox worker, senders and scheduler without the web app (serve starts it "
                       "when WORKER_PROCESSES is 1 or 2)")
    p.add_argument("--role", choices=["all", "inbox", "outbox"], default="all")
    p.add_argument("--wake-fd", type=int, help="pipe to watch for wake-ups (given by serve)")
    p.add_argument("--outbox-wake-fd", type=int, help="pipe to ring when replies are queued (given by serve)")
    p.add_argument("--parent-pid", type=int, help="stop when this process is gone (given by serve)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("db", help="database")
    dsub = p.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("upgrade", help="create or upgrade the database").set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("demo", help="seed the demo commune")
    p.add_argument("action", nargs="?", choices=["seed", "reset"], default="seed")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("criteria", help="criteria sets")
    csub = p.add_subparsers(dest="criteria_command", required=True)
    ps = csub.add_parser("score", help="score answers: prints JSON")
    ps.add_argument("title")
    ps.add_argument("answers", help="ANSWERS.json ({criterion id: value}), or - for stdin")
    ps.add_argument("--local", action="append", help="local supplement code (province or province/commune)")
    ps.set_defaults(func=cmd_criteria_score)
    pl = csub.add_parser("list", help="list the sets")
    pl.add_argument("title", nargs="?")
    pl.add_argument("--local", action="append")
    pl.set_defaults(func=cmd_criteria_list)

    p = sub.add_parser("remind", help="run a reminder campaign by hand")
    p.add_argument("campaign", nargs="?")
    p.add_argument("--year", type=int)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--now", help="ISO time to run as (default: now)")
    p.add_argument("--list", action="store_true", help="list campaigns with their next run")
    p.set_defaults(func=cmd_remind)

    p = sub.add_parser("officer", help="officer accounts")
    osub = p.add_subparsers(dest="officer_command", required=True)
    pa = osub.add_parser("add", help="add an officer")
    pa.add_argument("--commune", type=int, required=True, help="commune code")
    pa.add_argument("--name", required=True)
    pa.add_argument("--username", required=True)
    pa.add_argument("--phone", default="")
    pa.add_argument("--password", help="default: ask")
    pa.add_argument("--api-token", action="store_true", help="also create a token for the JSON API")
    pa.set_defaults(func=cmd_officer_add)

    p = sub.add_parser("villages", help="villages")
    vsub = p.add_subparsers(dest="villages_command", required=True)
    pi = vsub.add_parser("import", help="import villages (and households) from XLSX")
    pi.add_argument("file")
    pi.add_argument("--commune", type=int, required=True)
    pi.set_defaults(func=cmd_villages_import)

    p = sub.add_parser("export", help="write the commune's Excel files")
    p.add_argument("--commune", type=int, required=True)
    p.add_argument("--year", type=int, required=True)
    p.add_argument("--out", default=".")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("backup", help="back up the database (SQLite online backup; pg_dump guidance for PostgreSQL)")
    p.add_argument("--out", help="backup file (default: <database>.backup.db next to it)")
    p.add_argument("--restore", metavar="FILE", help="put this SQLite backup in place of the database (stop serve first)")
    p.set_defaults(func=cmd_backup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
