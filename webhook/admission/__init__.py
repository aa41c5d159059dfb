"""The admission face (``portcullis serve``): AdmissionReview over HTTPS → ``checks.pipeline`` → response.

``review`` (decode/encode), ``server`` (aiohttp routes), ``service`` (assembles the process),
``recorder`` (audit log), ``metrics``, ``tls``/``certs``/``certs_k8s`` (serving certificates),
``demo``. Never imported by ``core``, ``checks`` or another face.
"""
