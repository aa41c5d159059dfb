"""The CI face (``portcullis check``): manifests → the same checks as admission → findings.

``manifests`` (files, dirs, stdin; kubectl's YAML rules) → ``check`` (judged through
``checks.pipeline``) → ``formats`` (text, JSON, SARIF, JUnit, PolicyReport). Never imports
another face.
"""
