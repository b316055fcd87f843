"""The `lightabaco` command: run the server, manage local images, and talk to a server like `tapis actors`.

    lightabaco serve                      start everything (API, workers, cron) on 127.0.0.1:8000
    lightabaco actors create --image abacosamples/wc --name wc
    lightabaco send wc "count these words" --sync
    lightabaco executions wc ; lightabaco logs wc EXEC ; lightabaco results wc EXEC
    lightabaco images build images/wc --tag me/wc ; lightabaco images list
    lightabaco doctor

Client verbs find the server in --url / LIGHTABACO_URL (default http://127.0.0.1:8000) and the token in
--token / LIGHTABACO_TOKEN / the home's token file. `--json` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from .common import (EXIT_EMPTY, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, default_home, emit,  # noqa: F401
                     get, kv, table, version)
from .local import cmd_doctor, cmd_images, cmd_serve, cmd_token, cmd_users
from .client import Client, ClientError, resolve_token, resolve_url

# -- client verbs -------------------------------------------------------------------------------------

def _client(args: argparse.Namespace) -> Client:
    client = Client(resolve_url(args.url, args.home), resolve_token(args.token, args.home), timeout=args.timeout)
    # Let people use actor names where the API wants ids (or aliases), as faas-cli does with names.
    for attr in ("actor",):
        if isinstance(getattr(args, attr, None), str):
            setattr(args, attr, actor_id(client, getattr(args, attr)))
    if isinstance(getattr(args, "actors", None), list):
        args.actors = [actor_id(client, a) for a in args.actors]
    return client


def actor_id(client: Client, identifier: str) -> str:
    """The id of the actor called `identifier` (an id, a unique name, or else passed on as an alias)."""
    try:
        actors = client.list_actors()
    except ClientError:
        return identifier
    if any(a.get("id") == identifier for a in actors):
        return identifier
    named = [a["id"] for a in actors if a.get("name") == identifier]
    if len(named) > 1:
        raise CliError(f"{len(named)} actors are named {identifier!r} ({', '.join(named)}); use an id")
    return named[0] if named else identifier


ACTOR_COLUMNS = [("id", "ID"), ("name", "NAME"), ("image", "IMAGE"), ("status", "STATUS"),
                 ("stateless", "STATELESS"), ("create_time", "CREATED")]


def _actor_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.image:
        fields["image"] = args.image
    if args.name:
        fields["name"] = args.name
    if args.description:
        fields["description"] = args.description
    if args.stateful:
        fields["stateless"] = False
    if args.env:
        fields["default_environment"] = kv(args.env, "--env")
    if args.hint:
        fields["hints"] = args.hint
    if args.token_attr is not None:
        fields["token"] = args.token_attr == "true"
    if args.cron:
        fields["cron_schedule"] = args.cron
    if args.cron_on is not None:
        fields["cron_on"] = args.cron_on == "on"
    if args.max_workers is not None:
        fields["max_workers"] = args.max_workers
    if args.use_container_uid:
        fields["use_container_uid"] = True
    for key, value in kv(args.field, "--field").items():
        try:
            fields[key] = json.loads(value)
        except ValueError:
            fields[key] = value
    return fields


def cmd_actors(args: argparse.Namespace) -> int:
    client = _client(args)
    sub = args.actors_cmd
    if sub == "list":
        actors = client.list_actors()
        emit(args, actors, lambda: table(actors, ACTOR_COLUMNS, args.out))
    elif sub in ("create", "update"):
        fields = _actor_fields(args)
        if sub == "create" and "image" not in fields:
            raise CliError("actors create needs --image IMAGE (e.g. abacosamples/test)")
        if sub == "update":
            # PUT replaces the actor (Abaco semantics): start from the current definition.
            current = client.get_actor(args.actor)
            keep = ("image", "name", "description", "stateless", "default_environment", "hints", "token",
                    "max_workers", "use_container_uid", "cron_schedule", "cron_on", "link", "webhook", "privileged")
            fields = {**{k: get(current, k) for k in keep if get(current, k) is not None}, **fields}
            actor = client.update_actor(args.actor, fields)
        else:
            actor = client.create_actor(fields)
        emit(args, actor, lambda: print(get(actor, "id"), file=args.out))
    elif sub == "get":
        actor = client.get_actor(args.actor)
        emit(args, actor, lambda: [print(f"{k:22} {v}", file=args.out) for k, v in sorted(actor.items())])
    elif sub == "rm":
        for actor_id in args.actors:
            client.delete_actor(actor_id)
            if not args.json:
                print(f"deleted {actor_id}", file=args.out)
        if args.json:
            print(json.dumps({"deleted": args.actors}), file=args.out)
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    client = _client(args)
    env = kv(args.env, "--env")
    if args.binary == "-":
        binary: bytes | None = sys.stdin.buffer.read()
    else:
        binary = Path(args.binary).read_bytes() if args.binary else None
    message: Any = args.message
    if args.json_message is not None:
        try:
            message = json.loads(args.json_message)
        except ValueError as exc:
            raise CliError(f"--json-message is not valid JSON: {exc}") from None
    if binary is None and message is None:
        raise CliError("give a MESSAGE, --json-message JSON or --binary FILE")
    if args.sync:
        body = client.send_message(args.actor, message, binary=binary, env=env, sync=True)
        if args.json:
            print(json.dumps({"result": body.decode(errors="replace")}), file=args.out)
        else:
            _write_bytes(args, body)
        return EXIT_OK
    result = client.send_message(args.actor, message, binary=binary, env=env)
    execution_id = get(result, "execution_id")
    _warn_if_in_error(client, args.actor)
    if args.wait:
        execution = _wait(client, args.actor, execution_id, args.wait_timeout)
        result = {**result, "status": execution.get("status"), "exit_code": get(execution, "exit_code")}
    emit(args, result, lambda: print(execution_id if not args.wait else f"{execution_id} {result['status']}",
                                      file=args.out))
    return EXIT_OK


def _warn_if_in_error(client: Client, actor_id: str) -> None:
    """The message is queued either way (as in Abaco), but it runs only once the actor is fixed."""
    try:
        actor = client.get_actor(actor_id)
    except ClientError:
        return
    if actor.get("status") == "ERROR":
        print(f"warning: actor {actor_id} is in ERROR ({str(actor.get('status_message') or actor.get('statusMessage') or '').strip()}); "
              "the message waits in its queue until the actor is fixed (PUT it, with force=true to re-read "
              "its image)", file=sys.stderr)


def _wait(client: Client, actor: str, execution_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        execution = client.get_execution(actor, execution_id)
        if execution.get("status") in ("COMPLETE", "ERROR"):
            return execution
        if time.monotonic() > deadline:
            raise CliError(f"execution {execution_id} still {execution.get('status')} after {timeout:.0f} s; "
                           f"check it later with `lightabaco executions {actor} {execution_id}`")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def _write_bytes(args: argparse.Namespace, data: bytes) -> None:
    out = getattr(args.out, "buffer", None)
    if out is not None:
        out.write(data)
        out.flush()
    else:
        args.out.write(data.decode(errors="replace"))
    if data and not data.endswith(b"\n") and args.out.isatty():
        args.out.write("\n")


EXEC_COLUMNS = [("id", "EXECUTION"), ("status", "STATUS"), ("message_received_time", "RECEIVED"),
                ("start_time", "STARTED"), ("finish_time", "FINISHED")]


def cmd_executions(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.execution:
        execution = client.get_execution(args.actor, args.execution)
        emit(args, execution, lambda: [print(f"{k:24} {v}", file=args.out) for k, v in sorted(execution.items())])
        return EXIT_OK
    summary = client.list_executions(args.actor)
    rows = summary.get("executions", []) if isinstance(summary, dict) else []

    def human() -> None:
        table(rows, EXEC_COLUMNS, args.out)
        totals = {k: get(summary, k) for k in ("total_executions", "total_cpu", "total_io", "total_runtime")}
        print("  ".join(f"{k}={v}" for k, v in totals.items() if v is not None), file=args.out)

    emit(args, summary, human)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if not args.follow:
        logs = client.get_logs(args.actor, args.execution)
        emit(args, {"logs": logs}, lambda: args.out.write(logs))
        return EXIT_OK
    # Logs are readable while the execution runs: print what is new until it ends.
    shown = 0
    while True:
        execution = client.get_execution(args.actor, args.execution)
        logs = client.get_logs(args.actor, args.execution)
        if len(logs) > shown:
            args.out.write(logs[shown:])
            args.out.flush()
            shown = len(logs)
        if execution.get("status") in ("COMPLETE", "ERROR"):
            return EXIT_OK
        time.sleep(args.interval)


def cmd_results(args: argparse.Namespace) -> int:
    client = _client(args)
    items = list(client.results(args.actor, args.execution)) if args.all else \
        [r for r in [client.pop_result(args.actor, args.execution)] if r]
    if args.output:
        Path(args.output).write_bytes(b"".join(items))
    if args.json:
        print(json.dumps([i.decode(errors="replace") for i in items]), file=args.out)
    elif not args.output:
        for item in items:
            _write_bytes(args, item)
            if len(items) > 1:
                args.out.write("\n")
    if not items:
        # Not an error, but scripts need to tell it apart from one (`while lightabaco results ...; do`).
        print(f"lightabaco: no result left for execution {args.execution} (each result is returned once; "
              f"its logs: `lightabaco logs {args.actor} {args.execution}`)", file=args.err)
        return EXIT_EMPTY
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    if args.actor is None:
        # The database URL may come from LIGHTABACO_DATABASE_URL instead of the command line, so its
        # password need not appear in /proc/*/cmdline (readable by every user of the node): Slurm pilots
        # start worker hosts that way.
        database_url = args.database_url or (os.environ.get("LIGHTABACO_DATABASE_URL", "").strip()
                                             if args.api else "")
        if not database_url:
            print("lightabaco workers: give an actor (to list its workers), or --database-url URL --api URL "
                  "--home DIR to run this machine as a worker host.", file=args.err)
            return EXIT_USAGE
        from lightabaco.images import credential
        from lightabaco.server import worker_host, worker_host_settings

        settings = worker_host_settings(database_url, args.api or "", args.home, args.pool, args.host_name)
        if settings.images_source:
            try:
                credential.load(settings)
            except (OSError, ValueError) as exc:
                print(f"lightabaco workers: warning: no usable worker credential ({exc}); this host runs only "
                      f"the images already in its store. To fetch the others from {settings.images_source}, "
                      f"copy the API server's <home>/worker-token to {credential.path_of(settings)} (or set "
                      "LIGHTABACO_WORKER_TOKEN_FILE).", file=args.err)
        worker_host(database_url, args.api or "", args.home, settings=settings)
        return EXIT_OK
    client = _client(args)
    if args.add:
        # The API's `num` is the total wanted (Abaco semantics); --add means "this many more".
        client.add_workers(args.actor, len(client.list_workers(args.actor)) + args.add)
    workers = client.list_workers(args.actor)
    emit(args, workers, lambda: table(workers, [("id", "WORKER"), ("status", "STATUS"),
                                                  ("last_execution_time", "LAST EXECUTION")], args.out))
    return EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.set is not None:
        try:
            value = json.loads(args.set)
        except ValueError:
            value = args.set  # a plain string state
        result = client.set_state(args.actor, value)
    else:
        result = client.get_state(args.actor)
    state = get(result, "state") if isinstance(result, dict) else result
    emit(args, result, lambda: print(json.dumps(state) if not isinstance(state, str) else state, file=args.out))
    return EXIT_OK


def cmd_messages(args: argparse.Namespace) -> int:
    result = _client(args).count_messages(args.actor)
    emit(args, result, lambda: print(get(result, "messages"), file=args.out))
    return EXIT_OK


# -- argument parsing ---------------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # Accepted before or after the verb; the sub-parser's copies default to SUPPRESS so they do not
    # overwrite a value given before the verb.
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--url", default=default(None),
                        help="server URL (LIGHTABACO_URL; default: where the server on --home "
                        "listens, else http://127.0.0.1:8000)")
    parser.add_argument("--token", default=default(None),
                        help="API token (LIGHTABACO_TOKEN; default: the home's token file)")
    parser.add_argument("--home", default=default(None), help="home directory (LIGHTABACO_HOME; default ~/.lightabaco, "
                        "as root /var/lib/lightabaco)")
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=default(60.0), help="HTTP timeout in seconds (default 60)")


ACTOR_HELP = "actor id, unique name or alias"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightabaco", description="Abaco-compatible actors on one machine: "
                                     "no Docker, no root.")
    _common(parser, top=True)
    parser.add_argument("--version", action="version", version=f"lightabaco {version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], help_: str, **kw: Any) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_, description=help_, **kw)
        _common(p, top=False)
        p.set_defaults(func=func)
        return p

    serve = verb("serve", cmd_serve, "run the server: API, workers, cron (builds the sample images on first run)")
    serve.add_argument("--host", help="address to listen on (LIGHTABACO_HOST; default 127.0.0.1, this machine "
                       "only)")
    serve.add_argument("--port", type=int, help="TCP port (LIGHTABACO_PORT; default 8000); the CLI on the same "
                       "home finds it through <home>/run/server.json")
    serve.add_argument("--workers", type=int, help="executions run at the same time (LIGHTABACO_WORKERS; "
                       "default 8)")
    serve.add_argument("--backend", choices=["auto", "bwrap", "podman"],
                       help="sandbox for executions (LIGHTABACO_BACKEND; default auto: bwrap, else podman)")
    serve.add_argument("--auth", choices=["token", "none"],
                       help="token: every request needs a token (default); none: anyone who can reach the port "
                       "is the owner")
    serve.add_argument("--no-samples", action="store_true", help="do not build/import the sample images")
    slurm = serve.add_argument_group("Slurm pilots (docs/hpc.md)")
    slurm.add_argument("--slurm", action="store_true", help="run no executions here: submit Slurm pilot jobs "
                       "that run worker hosts, sized by the queue (LIGHTABACO_SLURM)")
    slurm.add_argument("--partition", help="sbatch --partition of the pilots (LIGHTABACO_SLURM_PARTITION)")
    slurm.add_argument("--account", help="sbatch --account of the pilots (LIGHTABACO_SLURM_ACCOUNT)")
    slurm.add_argument("--time-limit", help="sbatch --time of each pilot, e.g. 04:00:00 (LIGHTABACO_SLURM_TIME_LIMIT)")
    slurm.add_argument("--max-jobs", type=int, help="pilot jobs at most (LIGHTABACO_SLURM_MAX_JOBS; default 4)")

    from .users import USERS_DESCRIPTION, add_token_options, add_users_commands

    token = verb("token", cmd_token, "print the API token (--rotate replaces it)")
    add_token_options(token)
    users = verb("users", cmd_users, "manage users and their tokens (add, list, revoke, token)")
    users.description = USERS_DESCRIPTION
    add_users_commands(users, lambda p: _common(p, top=False))
    verb("doctor", cmd_doctor, "check what this host supports and how to fix what is missing")

    images = verb("images", cmd_images, "local images: list, import, pull, build, rm, prune, samples")
    isub = images.add_subparsers(dest="images_cmd", required=True, metavar="COMMAND")
    p = isub.add_parser("list", help="images in the store")
    _common(p, top=False)
    p = isub.add_parser("import", help="import an OCI layout dir, oci-archive or docker-archive")
    _common(p, top=False)
    p.add_argument("path", help="OCI layout directory, oci-archive or docker-archive (docker/podman save)")
    p.add_argument("--tag", help="name to give the image (default: the name recorded in the archive)")
    p = isub.add_parser("pull", help="pull from a registry (docker.io, quay.io, a local registry...)")
    _common(p, top=False)
    p.add_argument("ref", help="image reference, e.g. python:3.12-slim or localhost:5000/me/actor:1")
    p.add_argument("--insecure", action="store_true", help="plain HTTP / unverified TLS (local registries)")
    p.add_argument("--username", help="registry user; the password comes from LIGHTABACO_REGISTRY_PASSWORD")
    p = isub.add_parser("build", help="build a Containerfile (FROM/COPY/ADD/ENV/WORKDIR/USER/RUN/CMD/...)")
    _common(p, top=False)
    p.add_argument("dir", help="build context: the directory holding the Containerfile and its files")
    p.add_argument("--tag", "-t", help="name for the built image, e.g. me/actor")
    p.add_argument("--file", "-f", help="Containerfile name inside DIR (default Containerfile, then Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="value for an ARG")
    p.add_argument("--network", choices=["host", "none"], default="host", help="network for RUN (default host)")
    p.add_argument("--engine", choices=["bwrap", "podman", "auto"], default="bwrap",
                   help="what runs RUN steps (default bwrap)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step instead of reusing cached ones")
    p = isub.add_parser("rm", help="remove an image name (the image goes when no name is left)")
    _common(p, top=False)
    p.add_argument("ref", help="image name or id")
    p = isub.add_parser("prune", help="remove images no actor uses (names included), unreferenced layers and "
                        "the build step cache")
    _common(p, top=False)
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p = isub.add_parser("samples", help="build the sample images (abacosamples/test, wc, ...)")
    _common(p, top=False)
    p.add_argument("--no-python", action="store_true", help="only the busybox samples (no Debian mirror needed)")

    actors = verb("actors", cmd_actors, "register, list, inspect, update and delete actors")
    asub = actors.add_subparsers(dest="actors_cmd", required=True, metavar="COMMAND")
    p = asub.add_parser("list", help="actors you can see")
    _common(p, top=False)
    for name in ("create", "update"):
        kept = " (unspecified fields are kept)" if name == "update" else ""
        p = asub.add_parser(name, help=f"{name} an actor{kept}")
        _common(p, top=False)
        if name == "update":
            p.add_argument("actor", help=ACTOR_HELP)
        p.add_argument("--image", "-i", help="image name, e.g. abacosamples/wc")
        p.add_argument("--name", "-n", help="actor name (other verbs accept it where they want an id)")
        p.add_argument("--description", help="free text")
        p.add_argument("--stateful", action="store_true", help="one worker, ordered, with state")
        p.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE", help="default_environment")
        p.add_argument("--hint", action="append", default=[], help="a hint (repeatable)")
        p.add_argument("--token-attr", choices=["true", "false"], help="the actor's `token` attribute")
        p.add_argument("--cron", help='cron schedule, e.g. "now + 1 hour"')
        p.add_argument("--cron-on", choices=["on", "off"], help="turn the cron schedule on or off")
        p.add_argument("--max-workers", type=int, help="most workers the actor may have")
        p.add_argument("--use-container-uid", action="store_true", help="run as the image's USER")
        p.add_argument("--field", action="append", default=[], metavar="KEY=JSON", help="any other actor field")
    p = asub.add_parser("get", help="one actor's definition")
    _common(p, top=False)
    p.add_argument("actor", help=ACTOR_HELP)
    p = asub.add_parser("rm", help="delete actors")
    _common(p, top=False)
    p.add_argument("actors", nargs="+", help="actor ids or names")

    send = verb("send", cmd_send, "send a message to an actor (prints the execution id)")
    send.add_argument("actor", help=ACTOR_HELP)
    send.add_argument("message", nargs="?", help="the message text (the actor sees it as $MSG)")
    send.add_argument("--json-message", metavar="JSON", help="send a JSON message")
    send.add_argument("--binary", metavar="FILE", help="send FILE's bytes as a binary message ('-' = stdin)")
    send.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
                      help="extra environment for this execution (repeatable)")
    send.add_argument("--sync", action="store_true", help="wait and print the first result (or the logs)")
    send.add_argument("--wait", action="store_true", help="wait until the execution is COMPLETE")
    send.add_argument("--wait-timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")

    p = verb("executions", cmd_executions, "an actor's executions, or one execution's details")
    p.add_argument("actor", help=ACTOR_HELP)
    p.add_argument("execution", nargs="?", help="an execution id (omit for the list)")
    p = verb("logs", cmd_logs, "an execution's logs")
    p.add_argument("actor", help=ACTOR_HELP)
    p.add_argument("execution", help="execution id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the execution ends")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between polls with --follow")
    p = verb("results", cmd_results, "pop an execution's result (each result is returned once; exit status 3 "
             "when none is left)")
    p.add_argument("actor", help=ACTOR_HELP)
    p.add_argument("execution", help="execution id")
    p.add_argument("--all", action="store_true", help="every remaining result")
    p.add_argument("--output", "-o", help="write the bytes to a file")
    p = verb("workers", cmd_workers, "an actor's workers (--add N starts more); without an actor and with "
             "--database-url: run this machine as a worker host")
    p.add_argument("actor", nargs="?", help=ACTOR_HELP)
    p.add_argument("--add", type=int, metavar="N", help="start N more workers")
    p.add_argument("--database-url", metavar="URL",
                   help="worker host: the deployment's shared database (postgresql://...; with --api, "
                   "LIGHTABACO_DATABASE_URL when omitted)")
    p.add_argument("--api", metavar="URL", help="worker host: the API server it belongs to (images come from "
                   "its /v2/ with the worker credential: <home>/worker-token or LIGHTABACO_WORKER_TOKEN_FILE)")
    p.add_argument("--pool", type=int, metavar="N", help="worker host: runner processes (default: the cores, min 2)")
    p.add_argument("--host-name", metavar="NAME",
                   help="worker host: the name recorded on what it runs (default: this machine's name)")
    p = verb("state", cmd_state, "a stateful actor's state (--set JSON replaces it)")
    p.add_argument("actor", help=ACTOR_HELP)
    p.add_argument("--set", metavar="JSON", help="replace the state with this JSON (or plain string)")
    p = verb("messages", cmd_messages, "how many messages are waiting for an actor")
    p.add_argument("actor", help=ACTOR_HELP)
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.out, args.err = out or sys.stdout, err or sys.stderr
    if not getattr(args, "func", None):
        parser.print_help(args.err)
        return EXIT_USAGE
    args.home = Path(args.home).expanduser() if args.home else default_home()
    from lightabaco.protocol.errors import AbacoError
    from lightabaco.sandbox.errors import SandboxError

    try:
        return args.func(args)
    except ClientError as exc:
        print(f"lightabaco: {exc.message}", file=args.err)
    except (CliError, SandboxError) as exc:
        print(f"lightabaco: {exc}", file=args.err)
    except AbacoError as exc:
        print(f"lightabaco: {exc.message}", file=args.err)
    except FileNotFoundError as exc:
        print(f"lightabaco: {exc.strerror}: {exc.filename}", file=args.err)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `lightabaco ... | head`: the reader left; not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
