"""Events: the one schema (schema.py), writing a recording (writer.py), reading it back (reader.py)."""
