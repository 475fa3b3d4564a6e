"""Command-line entry points: ``serpytorc`` (compile) and ``serpytor`` (subcommands).

A user error prints one diagnostic and exits with status 1; a usage error exits with
status 2 (argparse); the Python traceback is shown only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .compiler import build_ir, compile_ast
from .compiler.kinds import ChannelKind
from .compiler.plan import Plan
from .dsl.parser import parse_file
from .errors import SerpytorError

EMIT_CHOICES = ("ast", "ir", "plan", "dot", "context")


class UserError(SerpytorError):
    """A bad path or argument found by the CLI itself."""


# ---- serpytorc ----------------------------------------------------------------------
def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipelines", nargs="+", metavar="PIPELINE.spg", help="pipelines to compile")
    parser.add_argument("-o", "--output", metavar="PATH", help="where to write the plan "
                        "(default: PIPELINE.spgc beside the source; one pipeline only)")
    parser.add_argument("--check", action="store_true", help="check only, write nothing")
    parser.add_argument("--emit", choices=EMIT_CHOICES, help="print an intermediate stage "
                        "instead of writing the plan")
    parser.add_argument("--explain", metavar="VERTEX", help="print every context fact "
                        "reaching VERTEX, where it comes from, and whether it is used")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Python tracebacks for errors")


def compile_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.output and len(args.pipelines) > 1:
        parser.error("-o/--output takes one pipeline")
    for path in args.pipelines:
        compile_one(Path(path), args)
    return 0


def compile_one(path: Path, args: argparse.Namespace) -> None:
    pipeline = _parse(path)
    if args.emit in ("ast", "ir"):
        print(_pretty_ast(pipeline) if args.emit == "ast" else str(build_ir(pipeline)), end="")
        return
    plan = compile_ast(pipeline)
    if args.emit:
        print(EMITTERS[args.emit](plan))
    elif args.explain:
        print(explain(plan, args.explain))
    elif args.check:
        print(f"{path}: ok: {plan.summary()}")
    else:
        output = Path(args.output) if args.output else path.with_suffix(".spgc")
        plan.save(output)
        print(f"{output}: {plan.summary()}")


def _parse(path: Path):
    try:
        return parse_file(path)
    except OSError as error:
        raise UserError(f"{path}: error: cannot read the pipeline: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: error: the pipeline is not UTF-8 text ({error.reason})") from None


def _pretty_ast(pipeline) -> str:
    import pprint

    return pprint.pformat(pipeline, width=100, sort_dicts=False) + "\n"


# ---- emitters -----------------------------------------------------------------------
def emit_plan_json(plan: Plan) -> str:
    group_names = [g["name"] for g in plan.groups]
    vertices = []
    for v in range(plan.n_vertices):
        template = plan.vertex_template(v)
        group = int(plan.arrays["vertex_group"][v])
        vertices.append({"name": plan.vertex_name(v),
                         "function": f"{template['module']}:{template['function']}",
                         "partition": int(plan.arrays["vertex_partition"][v]),
                         "group": group_names[group] if group >= 0 else None})
    edges = [{"src": s, "dst": d, "channel": str(c)} for s, d, c in plan.edges()]
    return json.dumps({"vertices": vertices, "edges": edges}, indent=1)


def emit_context_json(plan: Plan) -> str:
    contexts = {plan.vertex_name(v): plan.static_context(v) for v in range(plan.n_vertices)}
    return json.dumps(contexts, indent=1, default=repr)


def emit_dot(plan: Plan) -> str:
    lines = [f'digraph "{plan.pipeline}" {{', "  rankdir=LR;", "  node [shape=box];"]
    groups = plan.arrays["vertex_group"]
    for index, group in enumerate(plan.groups):
        lines.append(f'  subgraph "cluster_{group["name"]}" {{')
        lines.append(f'    label="{group["name"]}"; style=dashed;')
        lines += [f'    "{plan.vertex_name(int(v))}";' for v in (groups == index).nonzero()[0]]
        lines.append("  }")
    for src, dst, channel in plan.edges():
        label = "" if channel is ChannelKind.AUTO else f' [label="{channel}"]'
        lines.append(f'  "{src}" -> "{dst}"{label};')
    lines.append("}")
    return "\n".join(lines)


EMITTERS: dict[str, Callable[[Plan], str]] = {
    "plan": emit_plan_json, "context": emit_context_json, "dot": emit_dot,
}


def explain(plan: Plan, vertex: str) -> str:
    try:
        v = plan.index_of(vertex)
    except KeyError:
        raise UserError(f"error: no vertex named '{vertex}' in pipeline '{plan.pipeline}' "
                        f"(vertices are named like {plan.vertex_name(0)!r})") from None
    facts = plan.meta["facts"]
    nearest = plan.meta["contexts"][int(plan.arrays["vertex_context"][v])]
    reaching = [i for i, f in enumerate(facts)
                if plan.origin_name(f["origin"]) in set(plan.origins(v))]
    lines = [f"{vertex}: {len(reaching)} fact(s) reach it from "
             f"{', '.join(plan.origins(v))}"]
    for i in reaching:
        fact = facts[i]
        line = f"line {fact['line']}" if fact["line"] else "no line"
        status = _fact_status(plan, i, nearest.get(fact["key"], []))
        lines.append(f"  {fact['key']} = {fact['value']!r}  from {plan.origin_name(fact['origin'])}"
                     f" ({plan.meta['filename']}:{line.removeprefix('line ')})  {status}")
    return "\n".join(lines)


def _fact_status(plan: Plan, fact: int, nearest_ids: list[int]) -> str:
    if fact in nearest_ids:
        return "used" if len(nearest_ids) == 1 else "used (agrees with a parallel branch)"
    by = ", ".join(plan.origin_name(plan.meta["facts"][i]["origin"]) for i in nearest_ids)
    return f"overridden by {by}"


# ---- serpytor run / explain ------------------------------------------------------------
def add_journal_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--journal", metavar="DIR", help="journal directory (default: "
                        ".serpytor/ beside the pipeline)")
    parser.add_argument("--no-journal", action="store_true", help="record nothing, reuse nothing")
    parser.add_argument("--fresh", action="store_true", help="ignore what the journal holds")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Python tracebacks for errors")


def add_key_arguments(parser: argparse.ArgumentParser, binds: bool = False) -> None:
    """``--keys`` (and, for a process that binds, ``--insecure``)."""
    if binds:
        parser.add_argument("--keys", metavar="DIR", help="CURVE keys made by `serpytor "
                            "keygen`: encrypt, and accept only authorized clients")
        parser.add_argument("--insecure", action="store_true", help="allow binding a "
                            "public address without keys (anyone who reaches it gets in)")
    else:
        parser.add_argument("--keys", metavar="DIR", help="CURVE keys made by `serpytor "
                            "keygen`: authenticate and encrypt every connection")


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="where to write the keys")
    parser.add_argument("--force", action="store_true", help="replace existing keys")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", help="a .spg or .spgc file")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--inline", action="store_true", help="run in this process, one "
                      "vertex at a time (debugging)")
    mode.add_argument("--servers", metavar="ADDR,...", type=_address_list,
                      help="run on servers started with `serpytor server`")
    mode.add_argument("--gateway", metavar="ADDR", type=_address,
                      help="submit to a gateway started with `serpytor gateway`")
    parser.add_argument("--workers", metavar="N", type=_positive_int,
                        help="local servers to start (default: the core count)")
    parser.add_argument("--durable", action="store_true", help="fsync every output")
    parser.add_argument("--keep-going", action="store_true", help="after a failure, finish "
                        "everything not downstream of it")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        type=_assignment, help="override an origin-context fact "
                        "(VALUE is JSON, or a plain string)")
    parser.add_argument("--output", choices=("text", "json"), default="text",
                        help="how to print the results")
    add_key_arguments(parser)
    parser.add_argument("--queues", choices=("single", "stage"), default="single",
                        help="ready vertices wait in one queue (by priority) or in one "
                        "queue per stage, served in turn")
    parser.add_argument("--placement", metavar="POLICY", type=_placement,
                        help="how the gateway picks a server for each vertex: locality, "
                        "least_loaded, round_robin or MODULE:FUNCTION (default: the "
                        "pipeline's placement, else locality)")
    add_journal_arguments(parser)


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", help="a .spg or .spgc file")
    parser.add_argument("vertex", metavar="VERTEX", help="a vertex name, e.g. count[3]")
    add_journal_arguments(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _address_list(text: str) -> list[str]:
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    for address in addresses:
        if not address.startswith(("tcp://", "ipc://")):
            raise argparse.ArgumentTypeError(f"{address!r} is not an address like "
                                             "tcp://HOST:PORT")
    if not addresses:
        raise argparse.ArgumentTypeError("no server address given")
    return addresses


def _placement(text: str) -> str:
    if text in ("locality", "least_loaded", "round_robin"):
        return text
    module, sep, function = text.partition(":")
    if not sep or not module or not function:
        raise argparse.ArgumentTypeError(f"expected locality, least_loaded, round_robin or "
                                         f"MODULE:FUNCTION, got {text!r}")
    return text


def _address(text: str) -> str:
    return _address_list(text)[0] if "," not in text else _too_many(text)


def _too_many(text: str) -> str:
    raise argparse.ArgumentTypeError(f"expected one address, got {text!r}")


def _assignment(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .runtime.api import run

    result = run(args.pipeline, inline=args.inline, workers=args.workers,
                 servers=args.servers, journal=False if args.no_journal else args.journal,
                 fresh=args.fresh, durable=args.durable, overrides=dict(args.set),
                 keep_going=args.keep_going, progress=True, placement=args.placement,
                 queues=args.queues, keys=args.keys, gateway=args.gateway)
    if args.output == "json":
        print(json.dumps({"outputs": {k: _jsonable(v) for k, v in result.outputs.items()},
                          "stats": result.stats}))
    else:
        for name, value in result.outputs.items():
            print(f"{name}: {value!r}")
        stats = result.stats
        print(f"{stats['vertices']} vertices: {stats['executed']} executed, "
              f"{stats['reused']} reused, {stats['failed_attempts']} failed attempts "
              f"in {stats['seconds']:.2f} s", file=sys.stderr)
    for event in result.server_events:
        why = f": {event['why']}" if event.get("why") else ""
        print(f"server {event['server']} {event['event']}{why}", file=sys.stderr)
    if result.lost_attempts:
        print(f"{result.lost_attempts} attempts were lost and run again", file=sys.stderr)
    if result.error is not None:
        print(str(result.error), file=sys.stderr)
        return 1
    return 0


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", metavar="ADDR", default="tcp://127.0.0.1:*",
                        help="control address, e.g. tcp://127.0.0.1:5555 (port * picks one)")
    parser.add_argument("--name", help="the server's name in logs and status")
    parser.add_argument("--admit", metavar="MODULE:FUNCTION", help="admission hook "
                        "admit(plan, vertex) -> True, False or a reason string")
    parser.add_argument("--allow", metavar="MODULE,...", help="run only functions of "
                        "these modules (and their submodules)")
    parser.add_argument("--store", metavar="DIR", help="where journaled outputs are stored "
                        "(default: the gateway's journal directory)")
    parser.add_argument("--no-heartbeat", action="store_true", help="do not start a "
                        "heartbeat process beside the server")
    add_key_arguments(parser, binds=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="log and show tracebacks")


def server_command(args: argparse.Namespace) -> int:
    from .runtime.daemon import configure_logging, serve_until_signalled
    from .runtime.invoke import load_function
    from .runtime.server import Server, reexec_restart

    configure_logging(args.verbose)
    admission = None
    if args.admit:
        module, _, function = args.admit.partition(":")
        if not function:
            raise UserError(f"error: --admit takes MODULE:FUNCTION, got {args.admit!r}")
        admission = load_function(module, function)
    allowed = tuple(m.strip() for m in args.allow.split(",") if m.strip()) if args.allow else None
    try:
        server = Server(args.bind, name=args.name, admission=admission,
                        allowed_modules=allowed, store_dir=args.store,
                        restart=reexec_restart(args.argv), heartbeat=not args.no_heartbeat,
                        keys=args.keys, insecure=args.insecure)
    except SerpytorError:
        raise  # keys that cannot be read, a public address without keys: said as is
    except Exception as error:  # zmq errors: address in use, bad address
        raise UserError(f"error: cannot bind {args.bind}: {error}") from None
    return serve_until_signalled(f"serpytor server {server.name} listening on "
                                 f"{server.address}", server.serve)


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", metavar="ADDR", default="tcp://127.0.0.1:*",
                        help="where clients submit jobs, e.g. tcp://0.0.0.0:5550")
    parser.add_argument("--servers", metavar="ADDR,...", type=_address_list, required=True,
                        help="the servers the gateway runs jobs on")
    parser.add_argument("--state", metavar="DIR", default=".serpytor-gateway",
                        help="where the gateway journals its jobs (and, by default, their "
                        "vertices): a restarted gateway resumes them")
    parser.add_argument("--journal", metavar="DIR", help="the jobs' journal (default "
                        "STATE/journal)")
    add_key_arguments(parser, binds=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="log and show tracebacks")


def gateway_command(args: argparse.Namespace) -> int:
    from .runtime.daemon import configure_logging, serve_until_signalled
    from .runtime.service import GatewayService

    configure_logging(args.verbose)
    service = GatewayService(args.bind, args.servers, args.state, keys=args.keys,
                             insecure=args.insecure, journal_dir=args.journal)
    return serve_until_signalled(f"serpytor gateway listening on {service.address}",
                                 service.serve)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--gateway", metavar="ADDR", type=_address, help="ask a gateway")
    where.add_argument("--servers", metavar="ADDR,...", type=_address_list,
                       help="ask servers directly")
    add_key_arguments(parser)
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")


def status_command(args: argparse.Namespace) -> int:
    from .runtime.monitor import ServerMonitor, status_table
    from .runtime.security import load_security

    security = load_security(args.keys)
    if args.gateway:
        from .runtime.remote import GatewayClient

        with GatewayClient(args.gateway, security) as client:
            report = client.ask({"type": "status"})
        servers, jobs = report["servers"], report["jobs"]
    else:
        import zmq

        monitor = ServerMonitor(zmq.Context.instance(), args.servers, security)
        try:
            monitor.settle(3.0)
            servers, jobs = monitor.report(), []
        finally:
            monitor.close()
    if args.output == "json":
        print(json.dumps({"servers": servers, "jobs": jobs}))
        return 0
    print(status_table(servers))
    for job in jobs:
        print(f"job {job['job']} {job['pipeline']}: {job['state']} "
              f"({job['done']}/{job['total']} vertices)")
    print("failures: system = the heartbeat is silent too (machine or process group); "
          "application = the heartbeat answers but the server died or hung")
    return 0


def keygen_command(args: argparse.Namespace) -> int:
    from .runtime.security import keygen

    paths = keygen(args.directory, force=args.force)
    print(f"keys written to {paths.directory}: copy the whole directory to every server "
          f"host; a gateway host needs only {paths.client_secret.name} and "
          f"{paths.server_public.name}")
    return 0


def explain_command(args: argparse.Namespace) -> int:
    from .runtime.api import load_pipeline, open_durability
    from .runtime.explain import explain_vertex

    plan = load_pipeline(args.pipeline)
    try:
        vertex = plan.index_of(args.vertex)
    except KeyError as error:
        raise UserError(f"error: {error.args[0]}") from None
    durability = open_durability(plan, args.pipeline, False if args.no_journal else args.journal,
                                 args.fresh, False)
    try:
        print(explain_vertex(plan, durability, vertex))
    finally:
        durability.close()
    return 0


# ---- entry points -------------------------------------------------------------------
def run_guarded(function: Callable[[], int], verbose: bool) -> int:
    """Run a command; user errors print one diagnostic and return 1."""
    try:
        return function()
    except SerpytorError as error:
        if verbose:
            traceback.print_exc()
        print(str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def compiler_main(argv: Sequence[str] | None = None) -> int:
    """``serpytorc``: compile .spg pipelines into .spgc plans."""
    parser = argparse.ArgumentParser(prog="serpytorc", description=compiler_main.__doc__)
    add_compile_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: compile_command(args, parser), args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """``serpytor``: compile and run pipelines."""
    parser = argparse.ArgumentParser(prog="serpytor", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .runtime.heartbeat import add_heartbeat_arguments, heartbeat_command

    table: dict[str, tuple[str, Callable, Callable]] = {  # help, arguments, command
        "compile": ("compile pipelines (as serpytorc)", add_compile_arguments,
                    compile_command),
        "run": ("run a pipeline", add_run_arguments, run_command),
        "server": ("run a server that executes vertices", add_server_arguments,
                   server_command),
        "explain": ("say why a vertex would be reused or re-run", add_explain_arguments,
                    explain_command),
        "heartbeat": ("answer heartbeat requests with this machine's figures",
                      add_heartbeat_arguments, heartbeat_command),
        "gateway": ("run a gateway service that accepts jobs from `serpytor run "
                    "--gateway`", add_gateway_arguments, gateway_command),
        "status": ("servers and their heartbeats, and a gateway's jobs",
                   add_status_arguments, status_command),
        "keygen": ("make CURVE keys for servers and gateways", add_keygen_arguments,
                   keygen_command),
    }
    parsers = {}
    for name, (summary, add_arguments, _) in table.items():
        parsers[name] = commands.add_parser(name, help=summary)
        add_arguments(parsers[name])
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a server restarts with it
    command = table[args.command][2]
    # compile and run report usage errors through their own parser
    handler = (lambda: command(args, parsers[args.command])) \
        if args.command in ("compile", "run") else (lambda: command(args))
    return run_guarded(handler, getattr(args, "verbose", False))



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
