"""Image signatures: registry client, cosign and sigstore verification, trust policy, verdict cache.

Used by ``webhook.checks.images``. Layers, bottom up: ``reference`` and ``registry`` (I/O),
``evidence``, ``cosign``/``fulcio``/``sigstore`` (decode and verify), ``trust`` (policy),
``source`` (registry) and ``bundles`` (exported files) as the verifier's evidence sources,
``cache`` and ``verifier`` (orchestration); ``export`` and ``commands`` (``portcullis images``).
"""
