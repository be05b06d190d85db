"""Publish: a selection and its columns written as a Hub dataset folder (shards, card, explorer page,
manifest), verified, pushed, read back (:mod:`~d2c_pack.publish.shards`) and exported for other trainers.
"""
