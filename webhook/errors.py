"""The exception hierarchy shared by every face of Portcullis.

Two branches never mix: ``InputError`` means the caller must fix something (exit 2, HTTP 400);
``UpstreamError`` means something outside failed and the component's failure mode decides.
A policy violation is never an exception: it is a value (``core.decision.Violation``).
"""

from __future__ import annotations


class PortcullisError(Exception):
    """Root of every error Portcullis raises on purpose."""


class InputError(PortcullisError):
    """Bad input: the caller must fix something (exit code 2, HTTP 400)."""


class ConfigError(InputError):
    """The configuration file (or a flag) is invalid; the message names the key."""


class ReviewError(InputError):
    """An AdmissionReview (or a workload inside it) cannot be decoded."""


class ManifestError(InputError):
    """A manifest given to ``portcullis check`` cannot be read."""


class RuleLoadError(InputError):
    """A Falco rules file cannot be loaded; the message names file, line and text."""


class PolicyLoadError(InputError):
    """A Rego policy or Gatekeeper template cannot be loaded."""


class AuditFormatError(InputError):
    """An audit log, checkpoint, key or proof is malformed."""


class OutputError(PortcullisError):
    """A finished report could not be written (disk full, a reader that closed the pipe, a
    directory as the file): exit 2, so a gate never passes on a report nobody received."""


class UpstreamError(PortcullisError):
    """Trouble outside: handled by the component's stated failure mode."""


class AuditWorkerError(UpstreamError):
    """A process checking audit records in parallel died or answered short: its records were
    not checked, so the verification has no verdict (never a clean one)."""


class RegistryError(UpstreamError):
    """An OCI registry failed, timed out or answered something invalid."""


class ApiServerError(UpstreamError):
    """The Kubernetes API server failed or timed out."""


class OpaError(UpstreamError):
    """A remote OPA server failed or timed out."""


class DeadlineExceeded(UpstreamError):
    """A step ran out of the request's time budget."""
