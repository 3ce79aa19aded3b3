"""What a run leaves for people to read.

``run_report``: the end of train.py and evaluate.py (metrics.json, report.md and its plots,
data_report.md, the TensorBoard hparams row). ``overlays``: pictures of boxes (ground truth,
detections as true/false positives and misses, augmented samples, image files) for TensorBoard,
evaluate.py's overlays/ and ``beedet.predict``'s drawn/. ``text_table``: fixed-width tables for
the console commands.
"""
