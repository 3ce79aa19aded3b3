import os

# albumentations (2.0) asks pypi.org for a newer release on every import, a blocking request with a
# 2 s timeout: a training job or an endpoint without internet (network isolation, a VPC with no route
# out) would try the network and wait at start. beedet never wants that check; a user's explicit
# setting still wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
