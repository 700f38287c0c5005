"""Stored definitions: versions, the version in force, backfills and previews.

The SQL both the API (which activates) and the segmenter (which seeds, follows and
re-evaluates) run; docs/segments.md says how a user sees it.
"""
