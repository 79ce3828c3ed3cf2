"""Events: the one schema (schema.py), writing a recording (writer.py), its segments and disk budget
(segments.py), reading it back (reader.py, fast_reader.py)."""
