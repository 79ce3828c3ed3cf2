"""What the recorder shows while it runs: events per second per pod, and lost events.

A rich.Live table on stderr when stderr is a terminal; otherwise one status line every few
seconds (logs of an agent, CI output)."""
from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from ..render.safe import safe_text

NO_POD = "(no pod)"
MAX_PODS = 2_000


class Rates:
    """Events per pod over a sliding window (the live view's numbers)."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.total: Counter[str] = Counter()
        self._recent: deque[tuple[float, str]] = deque()

    def add(self, event: dict[str, Any], now: float | None = None) -> None:
        pod = event.get("pod_uid") or event.get("target_pod_uid") or NO_POD
        self.total[pod] += 1
        if len(self.total) > MAX_PODS:       # weeks of pods come and go: keep the busiest half
            self.total = Counter(dict(self.total.most_common(MAX_PODS // 2)))
        now = now if now is not None else time.monotonic()
        self._recent.append((now, pod))
        # without a live view (the agent) nothing calls per_second(): keep only the window here
        if self._recent[0][0] < now - 2 * self.window_s:
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()

    def per_second(self, now: float | None = None) -> dict[str, float]:
        now = now if now is not None else time.monotonic()
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
        counts = Counter(pod for _, pod in self._recent)
        return {pod: counts.get(pod, 0) / self.window_s for pod in self.total}


def status_line(elapsed: float, events: int, rates: dict[str, float], lost: int) -> str:
    pods = sum(1 for p in rates if p != NO_POD)
    rate = sum(rates.values())
    return f"sigtrace: recording {elapsed:.0f}s, {events} events ({rate:.1f}/s), {pods} pods, lost {lost}"


def render_table(elapsed: float, events: int, rates: Rates, lost_by_probe: dict[str, int], out_dir: str) -> Any:
    from rich.table import Table
    per_s = rates.per_second()
    lost = sum(lost_by_probe.values())
    title = f"sigtrace record → {out_dir}  {elapsed:.0f}s  {events} events"
    table = Table(title=title, title_justify="left", caption_justify="left", min_width=72)
    table.add_column("pod")
    table.add_column("events/s", justify="right")
    table.add_column("events", justify="right")
    for pod, total in rates.total.most_common(15):
        table.add_row(safe_text(pod), f"{per_s.get(pod, 0):.1f}", str(total))
    style = "bold red" if lost else "green"
    detail = ", ".join(f"{k} {v}" for k, v in lost_by_probe.items() if v) or "none"
    table.caption = f"[{style}]lost events: {lost}[/] ({detail})"
    return table


class LiveView:
    def __init__(self, console: Any, out_dir: str, enabled: bool, status_every_s: float = 10.0):
        self.console = console
        self.out_dir = out_dir
        self.rich = bool(enabled and console is not None and console.is_terminal)
        self.enabled = enabled
        self.status_every_s = status_every_s
        self._live = None
        self._last_status = time.monotonic()

    def start(self) -> None:
        if self.rich:
            from rich.live import Live
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.start()

    def update(self, elapsed: float, events: int, rates: Rates, lost_by_probe: dict[str, int]) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(render_table(elapsed, events, rates, lost_by_probe, self.out_dir))
        elif time.monotonic() - self._last_status >= self.status_every_s:
            self._last_status = time.monotonic()
            line = status_line(elapsed, events, rates.per_second(), sum(lost_by_probe.values()))
            if self.console is not None:
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
