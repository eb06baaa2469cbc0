"""Event-driven work: blob events, ingest, drop-folder prediction, training events."""
