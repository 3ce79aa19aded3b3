"""Inference beyond the network's forward pass, shared by validation, evaluate.py,
``beedet.predict``, ``beedet.export`` and serving.

``tiling``: sliced inference (overlapping tiles, optionally resized, merged across seams).
``detections``: the detections JSON document that ``beedet.predict`` writes and serving answers,
and the score threshold it keeps.
"""
