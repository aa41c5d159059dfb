"""The checks and the pipeline that runs them: one request's pod specs → check results → verdict.

``base`` (the protocol), ``privilege`` with ``pss`` (Pod Security Standards), ``runtimeclass``,
``images`` (signatures), ``gpu`` (quota), ``rego`` (policies), ``registry`` (which checks a config
enables), ``services`` (shared clients) and ``pipeline`` (run checks within the deadline, combine
modes into a verdict). May import ``core``, ``config``, ``kube``, ``signatures``, ``quota`` and
``policy``; every face (admission, CI, scans, replay) judges through ``pipeline``.
"""
