"""``linear``: a linear probe on the mean feature over time, the standard frozen-feature baseline (order-blind).

The features are normalised per channel (BatchNorm without learned scale: still one linear map at inference),
since frozen features share a large common offset; no projection, no hidden layer, no model.* key.
"""

from __future__ import annotations

from pipeline.sequence.models import register_model

register_model("linear", None, "pipeline.sequence.networks:LinearProbe", __doc__)
