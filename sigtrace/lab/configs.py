"""Configs and container factories for the lab pod: nginx in front of php-fpm over FastCGI.

The generated files are written to an app dir that every container sees read-only at
/lab; nginx.conf and php-fpm.conf are also mounted over their default paths
(/etc/nginx/nginx.conf, /etc/php/8.2/fpm/php-fpm.conf) so that a plain `nginx -s quit`
in a preStop finds the pid file exactly as it would in the official images.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .pod import ContainerSpec, Mount

NGINX_PORT = 8080
FPM_PORT = 9000
FPM_BIN = "php-fpm8.2"
NGINX_CONF_PATH = "/etc/nginx/nginx.conf"
FPM_CONF_PATH = "/etc/php/8.2/fpm/php-fpm.conf"
APP_DIR = "/lab"

# Sleeps ?ms= milliseconds, then answers: a request that is in flight for a known time.
# usleep() returns early when a signal arrives (fpm's SIGQUIT to its children), so sleep
# until the deadline: a real request (a DB query) is not cut short by a graceful stop either.
PHP_SCRIPT = """<?php
$ms = isset($_GET['ms']) ? max(0, min(600000, (int)$_GET['ms'])) : 0;
$end = microtime(true) + $ms / 1000;
while (($left = $end - microtime(true)) > 0) {
    usleep((int)($left * 1000000));
}
header('Content-Type: text/plain');
echo "ok pid=" . getmypid() . " slept_ms=" . $ms . "\\n";
"""


def nginx_time(seconds: float) -> str:
    """A duration as nginx parses it: whole milliseconds ("1.5s" and "1.0s" are invalid values)."""
    return f"{max(0, round(seconds * 1000))}ms"


def nginx_conf(*, workers: int = 2, keepalive_timeout_s: float = 65,
               worker_shutdown_timeout_s: float | None = None, port: int = NGINX_PORT,
               fastcgi: str = f"127.0.0.1:{FPM_PORT}") -> str:
    """nginx.conf in the foreground with a master (like the official image), logging to stderr."""
    shutdown = (f"worker_shutdown_timeout {nginx_time(worker_shutdown_timeout_s)};\n"
                if worker_shutdown_timeout_s is not None else "")
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid /run/nginx.pid;
error_log stderr notice;
{shutdown}events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path /tmp/client_body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    keepalive_timeout {nginx_time(keepalive_timeout_s)};
    server {{
        listen {port};
        root {APP_DIR}/www;
        location / {{
            fastcgi_pass {fastcgi};
            fastcgi_read_timeout 600s;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME {APP_DIR}/www/index.php;
        }}
    }}
}}
"""


def fpm_conf(*, children: int = 2, process_control_timeout_s: int = 0,
             listen: str = f"127.0.0.1:{FPM_PORT}") -> str:
    """php-fpm.conf: foreground, one static pool; process_control_timeout defaults to 0 as in PHP."""
    return f"""[global]
daemonize = no
error_log = /proc/self/fd/2
log_level = notice
process_control_timeout = {process_control_timeout_s}s

[www]
user = root
group = root
listen = {listen}
pm = static
pm.max_children = {children}
catch_workers_output = yes
clear_env = no
"""


@dataclass
class AppFiles:
    """Host paths of the files the containers mount."""
    root: Path
    nginx_conf: Path
    fpm_conf: Path


def write_app_dir(root: Path, *, nginx: str | Path | None = None, fpm: str | Path | None = None) -> AppFiles:
    """Write the app dir: www/index.php plus the two configs (text, or a user's file copied in)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "www").mkdir(exist_ok=True)
    (root / "www" / "index.php").write_text(PHP_SCRIPT)
    files = AppFiles(root, root / "nginx.conf", root / "php-fpm.conf")
    for target, source, default in ((files.nginx_conf, nginx, nginx_conf), (files.fpm_conf, fpm, fpm_conf)):
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_text(source if source is not None else default())
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    root.chmod(0o755)
    return files


# PID 1 variants for nginx. "sh": `sh -c 'nginx; exit $?'` keeps the shell as PID 1 (a
# trailing command prevents sh's exec of the last command); a PID 1 without a handler drops
# SIGTERM (the FIELD-GUIDE's case). "sh-trap": an entrypoint script that traps TERM (so the
# signal IS delivered) but never forwards it to nginx: the app waits for the SIGKILL.
WRAPPERS = {
    "none": ["nginx"],
    "sh": ["sh", "-c", "nginx; exit $?"],
    "sh-trap": ["sh", "-c", "trap 'echo wrapper: got TERM, not forwarding >&2' TERM; nginx & pid=$!; "
                            "while kill -0 $pid 2>/dev/null; do wait $pid; done"],
}


def nginx_container(app: AppFiles, *, name: str = "nginx", stop_signal: str = "SIGTERM",
                    prestop: list[str] | None = None, shell_wrapper: bool = False,
                    wrapper: str = "none") -> ContainerSpec:
    """nginx in exec form (PID 1 = nginx master), or under a wrapper (see WRAPPERS) as PID 1;
    shell_wrapper=True is wrapper="sh"."""
    args = WRAPPERS["sh" if shell_wrapper else wrapper]
    return ContainerSpec(name=name, args=args, stop_signal=stop_signal, prestop=prestop,
                         ready_ports=(NGINX_PORT,),
                         mounts=[Mount(str(app.nginx_conf), NGINX_CONF_PATH)])


def fpm_container(app: AppFiles, *, name: str = "php-fpm", stop_signal: str = "SIGTERM",
                  prestop: list[str] | None = None) -> ContainerSpec:
    """php-fpm master as PID 1 (-F foreground, -R allows root as in many images)."""
    return ContainerSpec(name=name, args=[FPM_BIN, "-F", "-R"], stop_signal=stop_signal, prestop=prestop,
                         ready_ports=(FPM_PORT,),
                         mounts=[Mount(str(app.fpm_conf), FPM_CONF_PATH)])
