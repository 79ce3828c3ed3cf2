"""The backend-independent record session: output files, meta.json, live view, stop handling.

    from sigtrace.record import RecordSession
    session = RecordSession(backend, out_dir)
    session.run(stop=threading.Event(), duration=60)    # or session.add_event(...) from other threads
"""
from .session import RecordResult, RecordSession

__all__ = ["RecordSession", "RecordResult"]
