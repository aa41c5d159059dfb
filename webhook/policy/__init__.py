"""Custom policies: Rego (embedded via regopy or a remote OPA) and Gatekeeper templates/constraints.

Stages: ``modules`` (files) → ``rego``/``gatekeeper`` (compile, evaluate) with ``plan``,
``reads``, ``native`` and ``lifecycle`` beside them; ``input`` builds the documents policies see;
``probe`` guards the engine against crashing inputs; ``testing`` runs policy test suites.
May import ``core``, ``config`` and ``kube``; ``checks.rego`` adapts it to the check protocol.
"""
