"""Pod Security Standards, natively: the checks of Kubernetes' Pod Security Admission, per version.

Stages: ``view`` (a pod spec decoded once into what the checks read) → ``baseline``,
``restricted``, ``hardened`` (the checks) → ``registry`` (which checks apply at a level and
version) → ``policy`` (which level and version apply in a namespace). ``checks.privilege`` is the
admission check built on them. ``screen`` merges the rules a plan's checks declare into one pass
over the raw pod spec: a pod it finds clean (most pods) skips the view and the checks; any other
is judged by them, so findings, their order and messages are the checks' own.

Check ids (``Violation.check``) are Pod Security Admission's own, prefixed ``pss:``:
``pss:hostNamespaces``, ``pss:privileged``, ``pss:capabilities_baseline``, ``pss:hostPathVolumes``,
``pss:hostPorts``, ``pss:appArmorProfile``, ``pss:seLinuxOptions``, ``pss:procMount``,
``pss:seccompProfile_baseline``, ``pss:sysctls``, ``pss:windowsHostProcess``,
``pss:hostProbesAndHostLifecycle`` (baseline); ``pss:allowPrivilegeEscalation``,
``pss:capabilities_restricted``, ``pss:procMount_restricted``, ``pss:restrictedVolumes``,
``pss:runAsNonRoot``, ``pss:runAsUser``, ``pss:seccompProfile_restricted`` (restricted). Beyond the
standard, the ``hardened`` profile adds ``hardened:readOnlyRootFilesystem``,
``hardened:resourceLimits``, ``hardened:imageTag``, ``hardened:automountServiceAccountToken`` and
``hardened:defaultServiceAccount``.
"""
