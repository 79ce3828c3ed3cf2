"""The one declaration of each event kind (sigtrace/events/kinds.py) against everything that must agree
with it: probes/sigtrace.h's defines, the probes in sigtrace.bpf.c, the bcc decoder, the strace
translator, capabilities, the kernel's required tracepoint fields and the README's tables. No root needed."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from sigtrace.backends.bpf import decode, kernel, pods, program
from sigtrace.backends.strace.translate import Translator
from sigtrace.backends.strace.procs import ProcTable
from sigtrace.events import capabilities as C
from sigtrace.events import kinds, markdown, schema as S
from test_bpf_units import _fake_event

REPO = Path(__file__).resolve().parent.parent
LOOP = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])


def _defines_with(prefix: str, *, but: tuple[str, ...] = ()) -> dict[str, int]:
    return {k: v for k, v in program.header_defines().items() if k.startswith(prefix) and k not in but}


def test_every_kind_and_probe_define_has_exactly_one_declared_kind_and_back():
    kind_defs = _defines_with("ST_KIND_")
    probe_defs = _defines_with("ST_PROBE_")
    probed = kinds.probed()
    assert sorted(kind_defs) == sorted(k.kind_define for k in probed)
    assert sorted(probe_defs) == sorted(k.probe_define for k in probed)
    # names match: ST_KIND_<NAME> is kind "name"; numbers distinct, probe indexes 0..ST_NPROBES-1
    assert {name[len("ST_KIND_"):].lower() for name in kind_defs} == {k.name for k in probed}
    assert len(set(kind_defs.values())) == len(kind_defs)
    assert sorted(probe_defs.values()) == list(range(program.header_defines()["ST_NPROBES"]))
    assert len(kinds.NAMES) == len(set(kinds.NAMES)) == len(kinds.DECLARED)


def test_each_probed_kind_is_emitted_by_its_tracepoint_program():
    source = (program.probes_dir() / "sigtrace.bpf.c").read_text()
    for k in kinds.probed():
        assert k.probe is not None
        category, name = k.probe.tracepoint.split(":")
        assert re.search(rf"TRACEPOINT_PROBE\({category}, {name}\)", source), k.probe.tracepoint
        assert re.search(rf"\b{k.kind_define}, {k.probe_define}\b", source), k.name


def test_the_decoders_tables_are_the_derived_ones():
    assert decode.KIND_NAMES == kinds.kind_defines()
    assert decode.PROBE_NAMES == kinds.probe_defines()
    defines = program.header_defines()
    d = decode.Decoder(defines, pods.PodRegistry(proc="/nonexistent"), {})
    assert d.kinds == {defines[k.kind_define]: k.name for k in kinds.probed()}
    assert d.probe_name(defines["ST_PROBE_TCP_STATE"]) == "sock:inet_sock_set_state"
    for path, fields in kinds.tracepoint_fields().items():
        assert kernel.REQUIRED_FIELDS[path] == fields


def test_header_tcp_states_are_the_schemas():
    states = _defines_with("ST_TCP_", but=("ST_TCP_RAW", "ST_TCP_ALL_STATES"))
    assert {v: k[len("ST_TCP_"):] for k, v in states.items()} == S.TCP_STATES


def _decoded(state: tuple[int, int] = (1, 4)) -> dict[str, dict]:
    """One decoded event of each probed kind, with every struct field filled."""
    defines = program.header_defines()
    reg = pods.PodRegistry(proc="/nonexistent")
    cidx = reg.cidx_of("0e0e0e0e-1111-2222-3333-444444444444", "abc123")
    reg.tasks[4242] = pods.TaskInfo(cidx, nspid=1, comm="nginx", ppid=1)
    d = decode.Decoder(defines, reg, {1: "NO_SOCKET"})
    out = {}
    for k in kinds.probed():
        out[k.name] = d.decode(_fake_event(
            defines, kind=defines[k.kind_define], ts_ns=10**9, pid=4242, tid=4242, cidx=cidx, nspid=1,
            comm=b"nginx", sig=15, code=0, result=0, target_pid=4242, target_cidx=cidx, handler=2, ppid=1,
            exit_code=0, exit_signal=0, filename=b"/usr/sbin/nginx", old_state=state[0], new_state=state[1],
            reason=1, skaddr=0x1234, pidx=reg.cref[cidx].pidx, sport=8080, dport=40000, saddr=LOOP, daddr=LOOP))
    return out


@pytest.mark.parametrize("state", [(1, 4), (10, 7)])
def test_decoded_events_carry_only_their_kinds_declared_fields(state):
    for name, ev in _decoded(state).items():
        assert ev["kind"] == name and None not in ev.values()
        assert set(ev) - {"ts", "kind"} <= set(kinds.BY_NAME[name].fields), name
    assert set(decode.DECODED_FIELDS) <= set(S.FIELD_NAMES)


def test_strace_translates_every_declared_call():
    handled = Translator(ProcTable("/nonexistent"), lambda e: None).handlers
    for k in kinds.DECLARED:
        if k.strace is not None:
            calls = [c for c in k.strace.calls if c.isidentifier()]     # not strace's `---`/`+++` lines
            assert set(calls) <= set(handled), (k.name, set(calls) - set(handled))


def test_recorders_claim_what_their_kinds_prove():
    from sigtrace.backends.bpf.backend import BpfBackend
    from sigtrace.backends.strace.backend import StraceBackend
    assert BpfBackend.capabilities == (C.SIGNAL_SENDER, C.SIGNAL_DELIVERY, C.PROCESS_EXEC, C.PROCESS_EXIT,
                                       C.TCP_STATES, C.KERNEL_RESETS)
    assert StraceBackend.capabilities == (C.SIGNAL_DELIVERY, C.PROCESS_EXEC, C.PROCESS_EXIT, C.SOCKET_CALLS)
    assert {c for k in kinds.DECLARED for c in k.proves} == set(C.ALL)


@pytest.mark.parametrize("names", [[k] for k in kinds.NAMES] + [list(kinds.NAMES)])
def test_capabilities_a_recordings_kinds_show_agree_with_the_report(names):
    """correlate.build.capabilities_of infers them for a meta.json without a list; it must say what
    the declaration says."""
    from sigtrace.correlate.build import capabilities_of
    inferred, _note = capabilities_of({}, pd.DataFrame({"kind": names}))
    assert inferred == kinds.capabilities_shown(names)


def test_schema_keeps_its_names_and_groups():
    assert S.KINDS == kinds.NAMES and S.SIGNAL_GENERATE == "signal_generate" and S.SOCK_CLOSE == "sock_close"
    assert S.SIGNAL_KINDS == (S.SIGNAL_GENERATE, S.SIGNAL_DELIVER)
    assert S.PROCESS_KINDS == (S.PROCESS_EXEC, S.PROCESS_EXIT)
    assert S.TCP_KINDS == (S.TCP_STATE, S.TCP_RESET_SENT, S.TCP_RESET_RECEIVED, S.TCP_CLOSE_COUNTS, S.SOCK_CLOSE,
                           S.CONNECT_ERROR)


def test_the_one_builder_makes_sparse_events_and_refuses_unknown_names():
    ev = S.new_event(S.SOCK_CLOSE, 1.5, pid=7, saddr="10.0.0.1", sport=80, daddr=None, reason="close")
    assert ev == {"ts": 1.5, "kind": S.SOCK_CLOSE, "pid": 7, "saddr": "10.0.0.1", "sport": 80, "reason": "close"}
    with pytest.raises(ValueError, match="sprot"):
        S.new_event(S.SOCK_CLOSE, 1.5, sprot=80)
    with pytest.raises(ValueError, match="sock_closed"):
        S.new_event("sock_closed", 1.5)


def test_readme_holds_the_generated_tables():
    readme = (REPO / "README.md").read_text()
    begin = readme.index(markdown.BEGIN)
    end = readme.index(markdown.END, begin) + len(markdown.END) + 1
    assert readme[begin:end] == markdown.tables(), "run: python -m sigtrace.events.markdown"
