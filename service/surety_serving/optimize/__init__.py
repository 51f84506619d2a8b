"""``surety optimize``: an ONNX graph rewrite that puts the ai.surety ops into exported models.

Softmax on the last axis becomes ``ai.surety::TwoPassSoftmax`` (with constant scalings and
0/-inf masks folded in); on request, attention subgraphs become ``ai.surety::SparseAttention``.
The rewritten model is run against the original on sample inputs and refused when an output
drifts past the tolerance. See docs/optimize.md.

The modules: :mod:`~surety_serving.optimize.pipeline` (``optimize``, ``optimize_file``),
:mod:`~surety_serving.optimize.options` (options and errors), :mod:`~surety_serving.optimize.report`, the
rewrites :mod:`~surety_serving.optimize.softmax` and :mod:`~surety_serving.optimize.attention` over
:mod:`~surety_serving.optimize.graph`, and the check, :mod:`~surety_serving.optimize.verify`. Nothing is
re-exported here, so that the CLI can read the options without importing onnx.
"""
