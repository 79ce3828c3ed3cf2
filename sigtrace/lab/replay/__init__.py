"""`sigtrace lab --replay DIR`: turn a recorded shutdown into a local reproduction and prove its fix.

learn.py reads the pod's settings off the recording, fixes.py applies what its verdicts name,
run.py runs both in the lab (recorded and reported like any lab run), render.py shows them."""
from .run import Replay, learn_recording, replay

__all__ = ["Replay", "learn_recording", "replay"]
