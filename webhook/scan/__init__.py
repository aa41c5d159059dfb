"""Background scans: existing cluster objects judged by the admission pipeline, written as
``wgpolicyk8s.io/v1alpha2`` PolicyReports (``portcullis scan`` and the scan loop in ``serve``)."""
