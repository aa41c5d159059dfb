"""Image signatures: registry client, cosign and sigstore verification, trust policy, verdict cache.

Used by ``webhook.checks.images``. Layers, bottom up: ``reference`` and ``registry`` (I/O),
``evidence``, ``cosign``/``fulcio``/``sigstore`` (decode and verify), ``trust`` (policy),
``cache`` and ``verifier`` (orchestration).
"""
