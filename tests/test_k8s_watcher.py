"""The API watcher against a real HTTP server on 127.0.0.1 speaking list/watch.

No kube-apiserver can be installed here; tests/k8s_fake_api.py serves the protocol
(chunked watch streams, resourceVersion, BOOKMARK, 410 Gone, dropped connections, 403)
and replays tests/data/k8s/rolling-update.json, a rolling update in the API's exact shape.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from k8s_fake_api import fake_api  # noqa: F401 (the fixture)
from sigtrace.events import lifecycle
from sigtrace.k8s.translate import PodTracker, SliceTracker, parse_time, pod_facts

DATA = json.loads((Path(__file__).parent / "data/k8s/rolling-update.json").read_text())
EXP = DATA["expect"]


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def lc(events, name, uid=None):
    return [e for e in events if e["event"] == name and (uid is None or e["pod_uid"] == uid)]


# ---- translation, no server ---------------------------------------------------------------
def test_pod_facts_map_container_ids_to_names_and_read_the_stop_spec():
    old = DATA["initial"][0]
    facts = pod_facts(old)
    assert facts["containers"] == EXP["containers_old"]          # containerd:// stripped
    assert facts["grace_period_s"] == 45
    assert facts["prestop"] == {"nginx": "nginx -s quit", "php-fpm": "sleep 5s"}
    assert facts["stop_signal"] == {"php-fpm": "SIGQUIT"}        # nginx: image default, unknown to the API
    assert facts["missing_container_ids"] == []
    pending = DATA["steps"][0]["object"]
    assert pod_facts(pending)["containers"] == {}
    assert pod_facts(pending)["missing_container_ids"] == ["nginx", "php-fpm"]


def test_pod_deleted_time_is_the_request_time_and_seen_is_not_repeated():
    t = PodTracker()
    old = DATA["initial"][0]
    assert [e["event"] for e in t.update(old, 1000.0)] == ["pod_seen"]
    assert t.update(old, 1001.0) == []                          # same facts: nothing new
    deleted = next(s["object"] for s in DATA["steps"] if "deletionTimestamp" in s["object"]["metadata"])
    (ev,) = t.update(deleted, 1002.0)
    assert ev["event"] == "pod_deleted"
    assert ev["ts"] == parse_time("2026-11-29T09:10:30Z")      # 09:11:15 deletionTimestamp - 45 s grace
    assert json.loads(ev["detail"])["grace_period_s"] == 45
    assert t.update(deleted, 1003.0) == []


def test_endpoint_not_ready_at_startup_is_not_a_stop():
    st = SliceTracker(node="node-a")
    es = json.loads(json.dumps(DATA["initial"][2]))
    es["endpoints"][0]["conditions"] = {"ready": False, "serving": False, "terminating": False}
    assert st.update(es, 1.0) == []
    es["endpoints"][0]["conditions"] = {"ready": True, "serving": True, "terminating": False}
    assert st.update(es, 2.0) == []
    es["endpoints"][0]["conditions"] = {"ready": False, "serving": False, "terminating": False}
    (ev,) = st.update(es, 3.0)                                   # a readiness probe failing
    assert ev["event"] == "endpoints_not_ready" and ev["ts"] == 3.0 and ev["pod_uid"] == EXP["old_uid"]


# ---- the watcher against the fake API server ----------------------------------------------
@pytest.fixture
def run_watcher():
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(url: str, **kw):
        from kubernetes import client
        from sigtrace.k8s.watcher import ApiWatcher
        cfg = client.Configuration()
        cfg.host = url
        cfg.retries = 0
        events: list[dict] = []
        lock = threading.Lock()

        def sink(ev):
            with lock:
                events.append(ev)
        kw = {"watch_timeout_s": 5, "backoff_initial_s": 0.05, "backoff_cap_s": 0.3, **kw}
        w = ApiWatcher(client.ApiClient(cfg), DATA["node"], sink, **kw)
        stop = threading.Event()
        t = threading.Thread(target=w.run, args=(stop,), daemon=True)
        t.start()
        started.append((stop, t))
        return w, events, stop, t

    yield start
    for stop, t in started:
        stop.set()
        t.join(timeout=10)
        assert not t.is_alive(), "the watcher did not stop"


def test_rolling_update_through_bookmarks_drops_and_410(fake_api, run_watcher):
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    w, events, stop, _ = run_watcher(fake_api.url)
    wait_for(lambda: lc(events, "pod_seen", EXP["old_uid"]), what="initial pod list")
    wait_for(lambda: fake_api.watch_count("endpointslices") >= 1 and fake_api.watch_count("pods") >= 1,
             what="both watches open")
    released: dict[str, float] = {}
    for i, step in enumerate(DATA["steps"]):
        released[step["label"]] = time.time()
        fake_api.apply(step["type"], step["object"])
        n = len(events)
        time.sleep(0.15)
        if i == 1:
            fake_api.bookmark()          # both watches move their resourceVersion
            time.sleep(0.15)
        if i == 2:
            fake_api.drop_watches()      # cut mid-chunk: reconnect from the last resourceVersion
            wait_for(lambda: fake_api.watch_count("pods") >= 2 and fake_api.watch_count("endpointslices") >= 2,
                     what="re-watch after drop")
        if i == 3:
            fake_api.compact()           # history gone: the next watch gets 410 -> relist
            fake_api.drop_watches()
            wait_for(lambda: fake_api.list_count("pods") >= 2 and fake_api.list_count("endpointslices") >= 2,
                     what="relist after 410")
        assert len(events) >= n
    wait_for(lambda: lc(events, "pod_removed", EXP["old_uid"]), what="old pod removal")
    time.sleep(0.2)

    # nothing about the pod on node-b, neither from the pod watch (field selector) nor slices
    assert not [e for e in events if e["pod_uid"] == EXP["other_uid"]]
    # the watch resumed from the bookmark's resourceVersion, not from the last object's
    rvs = [p for m, p in fake_api.requests if "watch=true" in p and "/pods?" in p]
    assert any(f"resourceVersion={fake_api.bookmarks[0]}" in p for p in rvs), rvs

    # names and container id -> name for both pods; the new pod first without IDs, then with
    seen_new = lc(events, "pod_seen", EXP["new_uid"])
    assert [json.loads(e["detail"])["containers"] for e in seen_new] == [{}, EXP["containers_new"]]
    assert json.loads(seen_new[0]["detail"])["missing_container_ids"] == ["nginx", "php-fpm"]
    assert all(e["pod_name"] == "web-5f6b7c9d8e-k8m2n" and e["namespace"] == "shop" for e in seen_new)
    (seen_old,) = lc(events, "pod_seen", EXP["old_uid"])       # relist after 410 repeated nothing
    assert json.loads(seen_old["detail"])["containers"] == EXP["containers_old"]
    assert w.lacking == {}                                       # the new pod got its IDs

    # deletion: time of the request, from deletionTimestamp - grace
    (deleted,) = lc(events, "pod_deleted", EXP["old_uid"])
    assert deleted["ts"] == parse_time("2026-11-29T09:10:30Z")
    d = json.loads(deleted["detail"])
    assert d["grace_period_s"] == 45 and d["deletion_timestamp"] == "2026-11-29T09:11:15Z"

    # endpoint transitions of the old pod, at the time the update reached us, in order
    t_nr = released["old endpoint not ready, terminating"]
    (nr,) = lc(events, "endpoints_not_ready", EXP["old_uid"])
    (term,) = lc(events, "endpoints_terminating", EXP["old_uid"])
    (gone,) = lc(events, "endpoints_removed", EXP["old_uid"])
    assert t_nr <= nr["ts"] < t_nr + 1.0 and term["ts"] == nr["ts"]
    assert nr["pod_name"] == "web-7d9c5b8f6d-x2x4q"
    nd = json.loads(nr["detail"])
    assert (nd["ready"], nd["serving"], nd["terminating"]) == (False, True, True)
    assert nd["service"] == "web" and nd["slice"] == "shop/web-x7k2p" and nd["addresses"] == ["10.244.1.17"]
    assert nd["trigger_time"] == "2026-11-29T09:10:30Z" and nd["via"] == "watch"
    t_rm = released["old endpoint removed"]
    assert t_rm <= gone["ts"] < t_rm + 1.0 and gone["ts"] > nr["ts"]
    # the new pod's endpoint was never not-ready, terminating or removed
    assert not [e for e in events if e["pod_uid"] == EXP["new_uid"] and e["event"].startswith("endpoints_")]
    assert w.summary()["problems"] == {}


def test_changes_missed_during_410_are_diffed_on_relist(fake_api, run_watcher):
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    w, events, stop, _ = run_watcher(fake_api.url)
    wait_for(lambda: fake_api.watch_count("endpointslices") >= 1, what="slice watch")
    # while the watch is down and history compacted: the slice is deleted and the old pod is gone
    fake_api.compact()
    es, old = DATA["initial"][2], DATA["initial"][0]
    with fake_api.cond:
        fake_api.objects = {k: v for k, v in fake_api.objects.items()
                            if v["metadata"]["uid"] not in (es["metadata"]["uid"], old["metadata"]["uid"])}
    fake_api.drop_watches()
    (gone,) = wait_for(lambda: lc(events, "endpoints_removed", EXP["old_uid"]), what="removal via relist")
    d = json.loads(gone["detail"])
    assert d["via"] == "relist" and d["slice_deleted"] is True and d["slice"] == "shop/web-x7k2p"
    (removed,) = wait_for(lambda: lc(events, "pod_removed", EXP["old_uid"]), what="pod removal via relist")
    assert json.loads(removed["detail"])["via"] == "relist"


def test_rbac_denied_keeps_pods_flowing_logs_one_line_and_recovers(fake_api, run_watcher, caplog):
    caplog.set_level(logging.INFO, logger="sigtrace.k8s")
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    fake_api.denied.add("endpointslices")
    w, events, stop, _ = run_watcher(fake_api.url)
    wait_for(lambda: fake_api.list_count("endpointslices") >= 4, what="several retries")
    assert lc(events, "pod_seen", EXP["old_uid"])                # pods unaffected
    denied = [r.message for r in caplog.records if "403" in r.message]
    assert len(denied) == 1 and "RBAC denied" in denied[0] and "endpointslices" in denied[0]
    assert "endpointslices" in w.summary()["problems"]
    fake_api.denied.clear()
    wait_for(lambda: not w.summary()["problems"], what="recovery")
    fake_api.apply("MODIFIED", DATA["steps"][4]["object"])       # old endpoint terminating
    wait_for(lambda: lc(events, "endpoints_terminating", EXP["old_uid"]), what="slice events after recovery")
    assert any("API access restored" in r.message for r in caplog.records)


def test_no_api_server_retries_with_backoff_and_stops_promptly(run_watcher, caplog):
    import socket
    caplog.set_level(logging.INFO, logger="sigtrace.k8s")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                                    # nothing listens there now
    w, events, stop, t = run_watcher(f"http://127.0.0.1:{port}", backoff_initial_s=0.02, backoff_cap_s=0.1)
    wait_for(lambda: len(w.summary()["problems"]) == 2, what="both streams failing")
    time.sleep(0.5)
    lines = [r.message for r in caplog.records if "cannot reach" in r.message]
    assert len(lines) == 2, lines                                # one line per stream, not one per retry
    assert events == []
    t0 = time.monotonic()
    stop.set()
    t.join(timeout=5)
    assert not t.is_alive() and time.monotonic() - t0 < 2


def test_kubeconfig_is_used_outside_the_cluster_and_a_missing_one_is_one_line(fake_api, tmp_path):
    from sigtrace.k8s.client import ClusterProblem, api_client
    kc = tmp_path / "config"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake_api.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}]}))
    from kubernetes import client
    api = api_client(str(kc))
    assert client.CoreV1Api(api).list_namespace().items == []
    with pytest.raises(ClusterProblem) as exc:
        api_client(str(tmp_path / "nope"))
    assert "\n" not in str(exc.value) and "--kubeconfig" in str(exc.value)


# ---- robustness: the API server going away, throttling, bad objects, big clusters ------------
def step(label: str) -> dict:
    return next(s["object"] for s in DATA["steps"] if s["label"] == label)


def test_api_down_for_a_while_then_back_relists_and_repeats_nothing(fake_api, run_watcher, caplog):
    caplog.set_level(logging.INFO, logger="sigtrace.k8s")
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    w, events, stop, _ = run_watcher(fake_api.url, backoff_initial_s=0.05, backoff_cap_s=0.2)
    wait_for(lambda: fake_api.watch_count("pods") >= 1 and fake_api.watch_count("endpointslices") >= 1,
             what="both watches open")
    fake_api.go_down()
    wait_for(lambda: len(w.summary()["problems"]) == 2, what="both streams failing")
    # meanwhile the old pod is deleted and its endpoint goes terminating; nobody is watching
    fake_api.apply("MODIFIED", step("old endpoint not ready, terminating"))
    deleted = next(s["object"] for s in DATA["steps"] if "deletionTimestamp" in s["object"]["metadata"])
    fake_api.apply("MODIFIED", deleted)
    wait_for(lambda: min(w.summary()["reconnects"].values()) >= 5, what="several retries while down")
    seen_before = len(lc(events, "pod_seen"))
    fake_api.come_back(compact=True)          # a restarted API server: old resourceVersions are gone
    wait_for(lambda: not w.summary()["problems"], what="recovery")
    wait_for(lambda: lc(events, "endpoints_terminating", EXP["old_uid"]) and lc(events, "pod_deleted", EXP["old_uid"]),
             what="changes made while down")
    s = w.summary()
    assert s["lists"] == {"pods": 2, "endpointslices": 2}          # 410 on re-watch -> one relist each
    assert s["errors"]["pods"]["gone"] == 1
    assert set(s["errors"]["pods"]) - {"gone"} <= {"refused", "stream_broken", "unreachable"}
    (term,) = lc(events, "endpoints_terminating", EXP["old_uid"])
    assert json.loads(term["detail"])["via"] == "relist"
    # no pod_seen flood: the relist found nothing new about the pods it already knew
    assert len(lc(events, "pod_seen")) == seen_before == 1
    # events keep flowing after the outage, through the new watch
    fake_api.apply("ADDED", DATA["steps"][0]["object"])
    wait_for(lambda: lc(events, "pod_seen", EXP["new_uid"]), what="events after recovery")
    lines = [r.message for r in caplog.records if "watching pods" in r.message]
    # one line per kind of problem (stream cut, reset, refused), not one per retry
    assert 1 <= len(lines) <= 3 < s["reconnects"]["pods"], lines
    assert sum("pods: API access restored" in r.message for r in caplog.records) == 1


def test_429_retry_after_is_honoured_and_5xx_backs_off(fake_api, run_watcher, caplog):
    caplog.set_level(logging.INFO, logger="sigtrace.k8s")
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    fake_api.fail("pods", 429, retry_after="1")
    fake_api.fail("endpointslices", 503, count=3)
    w, events, stop, _ = run_watcher(fake_api.url, backoff_initial_s=0.05, backoff_cap_s=0.4)
    wait_for(lambda: lc(events, "pod_seen", EXP["old_uid"]), what="pods after the 429")
    t = fake_api.request_times("pods", watch=False)
    assert 1.0 <= t[1] - t[0] < 1.6, t                               # Retry-After: 1 (+ up to 20 % jitter)
    wait_for(lambda: fake_api.watch_count("endpointslices") >= 1, what="slices after three 503s")
    t = fake_api.request_times("endpointslices", watch=False)
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert len(gaps) == 3 and all(g < 0.9 for g in gaps) and gaps[2] > gaps[0], gaps   # exponential, capped
    s = w.summary()
    assert s["errors"] == {"pods": {"http_429": 1}, "endpointslices": {"http_503": 3}}
    assert [r.message for r in caplog.records if "429" in r.message] == [
        "watching pods: API server is overloaded (429 Too Many Requests); retrying after its Retry-After"]
    assert len([r for r in caplog.records if "503" in r.message]) == 1


def test_malformed_objects_are_skipped_counted_and_logged_once_per_kind(fake_api, run_watcher, caplog):
    caplog.set_level(logging.INFO, logger="sigtrace.k8s")
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    w, events, stop, _ = run_watcher(fake_api.url)
    wait_for(lambda: fake_api.watch_count("pods") >= 1, what="pod watch")
    fake_api.inject_raw("pods", b'{"type": "MODIFIED", "object": {"kind": "Pod", "metad')
    fake_api.inject_raw("pods", b"<html>502 Bad Gateway</html>")
    fake_api.inject_raw("pods", json.dumps({"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "x"}}}).encode())
    bad = json.loads(json.dumps(DATA["initial"][0]))
    bad["metadata"]["uid"] = "bad-uid"
    bad["spec"]["containers"] = "nginx"                               # a string where a list belongs
    fake_api.inject_raw("pods", json.dumps({"type": "ADDED", "object": bad}).encode())
    # a BOOKMARK whose metadata is a list (was a reconnect loop), labels nested past json's stack
    fake_api.inject_raw("pods", b'{"type": "BOOKMARK", "object": {"metadata": ["x"]}}')
    deep = json.loads(json.dumps(DATA["initial"][0]))
    deep["metadata"]["uid"] = "deep-uid"
    deep["metadata"]["labels"] = {"a": "PLACEHOLDER"}
    fake_api.inject_raw("pods", json.dumps({"type": "ADDED", "object": deep}).encode()
                        .replace(b'"PLACEHOLDER"', b"[" * 1000 + b"]" * 1000))
    fake_api.apply("ADDED", DATA["steps"][0]["object"])               # a good one after the bad ones
    wait_for(lambda: lc(events, "pod_seen", EXP["new_uid"]), what="the good event after the bad ones")
    assert w.summary()["malformed"] == {"pods": {"watch line is not JSON": 2,
                                                 "object without metadata.uid/name": 1,
                                                 "unusable object (TypeError)": 1,
                                                 "BOOKMARK event without metadata": 1,
                                                 "unusable object (RecursionError)": 1}}
    assert not [e for e in events if e["pod_uid"] in ("bad-uid", "deep-uid")]
    assert "bad-uid" not in w.pods.pods and "deep-uid" not in w.pods.pods      # nothing half-remembered
    lines = [r.message for r in caplog.records if "malformed" in r.message]
    assert len(lines) == 5, lines                                     # one per kind, not per object
    assert fake_api.watch_count("pods") == 1                          # a bad object is no reason to reconnect


def test_watch_error_event_and_a_stalled_list_are_retried(fake_api, run_watcher, caplog):
    caplog.set_level(logging.INFO, logger="sigtrace.k8s")
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    fake_api.hang.add("endpointslices")                               # accepts, never answers
    w, events, stop, _ = run_watcher(fake_api.url, list_timeout_s=0.3)
    wait_for(lambda: "endpointslices" in w.summary()["problems"], what="list timeout")
    assert "did not answer in time" in w.summary()["problems"]["endpointslices"]
    fake_api.hang.clear()
    wait_for(lambda: fake_api.watch_count("endpointslices") >= 1, what="slices after the stall")
    assert w.summary()["errors"]["endpointslices"]["timeout"] >= 1
    wait_for(lambda: fake_api.watch_count("pods") >= 1, what="pod watch")
    fake_api.inject_raw("pods", json.dumps({"type": "ERROR", "object": {
        "kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd leader changed"}}).encode())
    wait_for(lambda: fake_api.watch_count("pods") >= 2, what="re-watch after an ERROR event")
    assert w.summary()["errors"]["pods"] == {"watch_error_500": 1}
    assert w.summary()["lists"]["pods"] == 1                          # not a 410: resumed, no relist
    fake_api.apply("MODIFIED", step("old endpoint not ready, terminating"))
    wait_for(lambda: lc(events, "endpoints_terminating", EXP["old_uid"]), what="events after the errors")


def other_node_slice(i: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc{i}-abcde", "namespace": f"ns{i % 40}", "uid": f"slice-{i}",
                         "labels": {"kubernetes.io/service-name": f"svc{i}"}},
            "addressType": "IPv4", "ports": [{"port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.{i // 250 % 250}.{i % 250}.{j}"], "nodeName": f"node-{j}",
                           "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "namespace": f"ns{i % 40}", "name": f"p{i}-{j}",
                                         "uid": f"pod-{i}-{j}"}} for j in range(3)]}


def test_slice_cache_holds_only_this_nodes_slices_on_a_big_cluster(fake_api, run_watcher):
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    for i in range(1500):
        fake_api.apply("ADDED", other_node_slice(i))
    w, events, stop, _ = run_watcher(fake_api.url, list_page=100)
    wait_for(lambda: fake_api.watch_count("endpointslices") >= 1, what="slice watch", timeout=30)
    assert fake_api.list_count("endpointslices") == 16                # 1502 slices in pages of 100
    assert w.summary()["cache"] == {"pods": 1, "pods_removed": 0, "endpointslices": 1, "endpoints": 1}
    for i in range(1500, 2500):                                       # the cluster churns elsewhere
        fake_api.apply("ADDED", other_node_slice(i))
    fake_api.apply("MODIFIED", step("old endpoint not ready, terminating"))
    wait_for(lambda: lc(events, "endpoints_terminating", EXP["old_uid"]), what="our slice's change", timeout=30)
    assert w.summary()["cache"]["endpointslices"] == 1
    assert {e["pod_uid"] for e in events} == {EXP["old_uid"]}
    fake_api.apply("MODIFIED", step("old endpoint removed"))
    wait_for(lambda: lc(events, "endpoints_removed", EXP["old_uid"]), what="removal")
    assert w.summary()["cache"]["endpoints"] == 1                     # the new pod's endpoint, also on node-a
    elsewhere = json.loads(json.dumps(step("old endpoint removed")))
    elsewhere["endpoints"] = [e for e in elsewhere["endpoints"] if e["nodeName"] != "node-a"]
    fake_api.apply("MODIFIED", elsewhere)
    wait_for(lambda: lc(events, "endpoints_removed", EXP["new_uid"]), what="our last endpoint leaving")
    assert w.summary()["cache"]["endpointslices"] == 0                # no endpoint of ours left: not kept
    fake_api.compact()                                                # and a relist keeps it that way
    fake_api.drop_watches()
    wait_for(lambda: w.summary()["lists"]["endpointslices"] == 2, what="relist", timeout=30)
    assert w.summary()["cache"]["endpointslices"] == 0


def test_removed_pods_are_forgotten_after_their_ttl_and_beyond_the_cap():
    t = PodTracker(removed_ttl_s=60, max_removed=10)
    base = DATA["initial"][0]
    for i in range(30):
        pod = json.loads(json.dumps(base))
        pod["metadata"]["uid"] = f"job-{i}"
        t.update(pod, 1000.0 + i)
        assert [e["event"] for e in t.update(pod, 1000.0 + i, gone=True)] == ["pod_removed"]
    assert len(t.pods) == len(t.names) == len(t.removed_at) == 10      # the newest ten tombstones
    assert set(t.pods) == {f"job-{i}" for i in range(20, 30)}
    t.expire(1029.0 + 61)
    assert t.pods == {} and t.names == {} and not t.removed_at


def test_a_watch_line_past_the_cap_is_read_past_and_counted(fake_api, run_watcher, monkeypatch):
    """A watch line of any length (an endless one grew the agent by 400 MB in 12 s) is read past,
    never held, counted; the events after it are handled on the same stream."""
    from sigtrace.k8s import watcher
    monkeypatch.setattr(watcher, "MAX_WATCH_LINE", 1 << 20)
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    w, events, stop, _ = run_watcher(fake_api.url)
    wait_for(lambda: fake_api.watch_count("pods") >= 1, what="pod watch")
    fake_api.inject_raw("pods", b'{"type": "ADDED", "object": {"metadata": {"name": "' + b"x" * (3 << 20) + b'"}}}')
    fake_api.apply("ADDED", DATA["steps"][0]["object"])
    wait_for(lambda: lc(events, "pod_seen", EXP["new_uid"]), what="the good event after the long line")
    assert w.summary()["malformed"] == {"pods": {"watch line longer than 1 MiB": 1}}
    assert fake_api.watch_count("pods") == 1


def test_a_list_answer_past_the_cap_is_an_error_retried_not_buffered(fake_api, run_watcher, monkeypatch):
    """A list answer past MAX_LIST_BYTES (a server ignoring limit=: 3 GB in 3 s before) is cut off
    and retried with backoff, counted as a malformed list."""
    from sigtrace.k8s import watcher
    monkeypatch.setattr(watcher, "MAX_LIST_BYTES", 1024)
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    w, events, stop, _ = run_watcher(fake_api.url)
    wait_for(lambda: (w.summary().get("errors") or {}).get("pods"), what="the list refused")
    assert "malformed_list" in w.summary()["errors"]["pods"], w.summary()
    assert not events
