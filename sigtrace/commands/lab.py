"""`sigtrace lab`: reproduce a pod's shutdown on this machine and see it from both sides."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import click

from ..errors import LabError


def _per_container(values: tuple[str, ...], option: str, default: str | None) -> dict[str, str]:
    """'nginx=TERM' -> {'nginx': 'TERM'}; a bare value applies to `default` (nginx)."""
    from ..lab.scenario import CONTAINERS
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if sep and name in CONTAINERS:
            out[name] = rest
        elif default is not None:
            out[default] = v
        else:
            raise LabError(f"{option} {v!r}: use CONTAINER=VALUE with CONTAINER one of {', '.join(CONTAINERS)}")
    return out


EXAMPLES = """
\b
Examples:
  sudo sigtrace lab --prestop 'nginx -s quit' --stop-signal nginx=TERM
  sudo sigtrace lab --stop-signal nginx=QUIT --stop-signal php-fpm=QUIT \\
        --prestop nginx='sleep 5' --prestop php-fpm='sleep 5' --process-control-timeout 10
  sudo sigtrace lab --stop-order php-fpm,nginx --stop-delay 1 --lb-delay 3
  sudo sigtrace lab --nginx-conf ./nginx.conf --fpm-conf ./php-fpm.conf --output /tmp/lab
  sudo sigtrace lab --demo        # the article's case, then the fixed configuration
"""


@click.command(epilog=EXAMPLES)
@click.option("--nginx-conf", type=click.Path(path_type=Path), help="Your nginx.conf (default: built in; "
              "must listen on 8080 and pass FastCGI to 127.0.0.1:9000).")
@click.option("--fpm-conf", type=click.Path(path_type=Path), help="Your php-fpm.conf (default: built in).")
@click.option("--workers", type=int, default=2, show_default=True, help="nginx workers and fpm children.")
@click.option("--prestop", multiple=True, metavar="[CONTAINER=]CMD",
              help="preStop exec command (CONTAINER nginx or php-fpm; bare CMD = nginx). Repeatable.")
@click.option("--stop-signal", multiple=True, metavar="CONTAINER=SIG",
              help="STOPSIGNAL per container (default SIGTERM), e.g. nginx=QUIT. Repeatable.")
@click.option("--grace", type=float, default=30.0, show_default=True, help="terminationGracePeriodSeconds.")
@click.option("--stop-order", help="Stop containers in this order instead of in parallel, e.g. php-fpm,nginx.")
@click.option("--stop-delay", type=float, default=0.0, show_default=True,
              help="Seconds between containers' stops (with --stop-order).")
@click.option("--process-control-timeout", type=int, default=0, show_default=True,
              help="php-fpm process_control_timeout (built-in config).")
@click.option("--worker-shutdown-timeout", type=float, help="nginx worker_shutdown_timeout (built-in config).")
@click.option("--keepalive-timeout", type=float, default=65.0, show_default=True,
              help="nginx keepalive_timeout in seconds (built-in config).")
@click.option("--shell-wrapper", is_flag=True, help="Run nginx under `sh -c` as PID 1 (drops SIGTERM).")
@click.option("--wrapper", type=click.Choice(["none", "sh", "sh-trap"]), default="none", show_default=True,
              help="nginx's PID 1: sh drops SIGTERM; sh-trap catches it and never forwards it.")
@click.option("--request-ms", type=int, default=2000, show_default=True, help="How long each request runs in PHP.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Concurrent clients.")
@click.option("--lb-delay", type=float, default=1.0, show_default=True,
              help="Seconds the load balancer keeps sending after the deletion (endpoint propagation).")
@click.option("--keepalive-idle-ms", type=int, default=None, metavar="MS",
              help="Clients are a load balancer's pool of keep-alive connections (one per --concurrency) that "
                   "idle MS between requests and reuse the connection without checking it.")
@click.option("--layout", type=click.Choice(["cgroupfs", "systemd"]), default="cgroupfs", show_default=True,
              help="kubelet cgroup driver layout.")
@click.option("--backend", type=click.Choice(["bpf", "strace", "none"]), default="bpf", show_default=True,
              help="How to record (none: client view only).")
@click.option("--output", type=click.Path(path_type=Path), help="Recording dir (default: a new dir in /tmp).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--pod-uid", help="Use this pod uid (default: a new uuid4).")
@click.option("--exec-probe", type=float, default=None, metavar="SECONDS",
              help="Exec into every container this often, as kubelet exec probes do (e.g. 1).")
@click.option("--demo", is_flag=True, help="Run the article's case (preStop `nginx -s quit`, TERM), then the fix, "
              "then replay the article's recording and prove the fix.")
@click.option("--replay", "replay_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Replay a recorded pod's shutdown (learned from the recording DIR alone), then its fix.")
@click.option("--pod", "replay_pod", metavar="UID|NAME", help="With --replay: the pod (default: the only stopped one).")
def lab(nginx_conf, fpm_conf, workers, prestop, stop_signal, grace, stop_order, stop_delay,
        process_control_timeout, worker_shutdown_timeout, keepalive_timeout, shell_wrapper, wrapper, request_ms,
        concurrency, lb_delay, keepalive_idle_ms, layout, backend, output, fmt, pod_uid, exec_probe, demo,
        replay_dir, replay_pod) -> None:
    """Reproduce a pod's shutdown locally: real runc containers (nginx + php-fpm), load through
    them, a deletion like kubelet + containerd, and the client's view beside the report.

    With --replay DIR: learn how a recorded pod was stopped (stop signals, preStop, grace period,
    wrapper, stop order, request durations, balancer lag), run it so, check the replay shows the
    recorded verdicts, apply the fixes they name and run again to prove them."""
    from ..lab.driver import demo_scenarios, run_and_show

    def interrupted(signum, frame):
        # SIGTERM unwinds like Ctrl-C: containers, cgroups and the netns are removed on the way out
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)

    out_root = output or Path(f"/tmp/sigtrace-lab-{time.strftime('%Y%m%d-%H%M%S')}")
    if replay_pod and not replay_dir:
        raise LabError("--pod selects the pod of --replay DIR: give --replay too")
    if replay_dir:
        _replay(replay_dir, replay_pod, out_root, layout, backend, fmt)
        return
    if demo:
        runs = demo_scenarios(layout=layout)
    else:
        from ..lab.scenario import Scenario
        s = Scenario(nginx_conf=nginx_conf, fpm_conf=fpm_conf, workers=workers,
                     prestop=_per_container(prestop, "--prestop", "nginx"),
                     stop_signal=_per_container(stop_signal, "--stop-signal", None),
                     grace_s=grace, stop_order=[c.strip() for c in stop_order.split(",")] if stop_order else None,
                     stop_delay_s=stop_delay, process_control_timeout_s=process_control_timeout,
                     worker_shutdown_timeout_s=worker_shutdown_timeout, keepalive_timeout_s=keepalive_timeout,
                     shell_wrapper=shell_wrapper, wrapper=wrapper, request_ms=request_ms, concurrency=concurrency,
                     lb_delay_s=lb_delay, keepalive_idle_ms=keepalive_idle_ms, layout=layout,
                     uid=pod_uid, exec_probe_s=exec_probe)
        runs = [("lab", s)]
    results = run_and_show(runs, out_root, backend=backend, fmt=fmt)
    if demo and backend != "none":
        article = Path(results[0]["out_dir"])
        replayed = _replay(article, results[0]["pod_uid"], out_root / "replay", layout, backend, fmt, echo=False)
        results.append({"replay": replayed})
    if fmt == "json":
        click.echo(json.dumps(results, indent=2, default=str))


def _replay(directory: Path, pod: str | None, out_root: Path, layout: str, backend: str, fmt: str,
            echo: bool = True) -> dict:
    from rich.console import Console

    from ..lab.replay import replay
    from ..lab.replay.render import show
    from ..render.safe import plain
    console = Console(stderr=(fmt == "json"))
    console.rule(f"[bold]replay of {plain(str(directory))}")
    with console.status("replaying...") as status:
        rp = replay(directory, out_root, pod=pod, layout=layout, backend=backend,
                    progress=lambda what: status.update(what + "..."))
    if fmt == "text":
        show(rp, console)
    elif echo:
        click.echo(json.dumps(rp.to_dict(), indent=2, default=str))
    return rp.to_dict()
