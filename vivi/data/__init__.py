"""Data: the built-in video world, ingestion of videos into shards, and downstream image tasks."""
