"""Resumable tunneled streams: the edge re-dials, the core parks and replays."""
