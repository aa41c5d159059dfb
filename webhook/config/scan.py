"""Config of background scans (``scan:``): ``portcullis scan`` and the scan loop in ``serve``."""

from __future__ import annotations

from webhook.config.base import Section


class ScanConfig(Section, frozen=True):
    """What the scans judge, how fast, where the results go, and how replicas elect one scanner.

    - ``enabled``: run the scan loop inside ``serve`` (leader-elected; one replica scans).
    - ``objects_per_second`` / ``burst``: the judging rate limit (a token bucket), so a scan of a
      large cluster never starves admission of CPU.
    - ``writes_per_second``: report writes to the API server (create/replace/delete).
    - ``budget_seconds``: the deadline of one object's judgement; image signatures are served
      from the cache or verified within it, else the images check reports ``error``.
    - ``rescan_interval``: seconds between full re-judgements (policies, image verdicts and
      namespace labels change without the object changing); 0 = only on changes.
    - ``exclude_namespaces``: never judged nor reported.
    - ``lease_*``: the ``coordination.k8s.io/v1`` Lease of the election, with client-go's timing
      (``lease_duration`` > ``renew_deadline`` > ``retry_period``); ``lease_namespace`` defaults
      to ``$POD_NAMESPACE``, then ``default``; ``identity`` to ``$POD_NAME``, then the host name.
    """

    enabled: bool = False
    objects_per_second: float = 2000.0
    burst: int = 500
    writes_per_second: float = 50.0
    budget_seconds: float = 2.0
    rescan_interval: float = 3600.0
    exclude_namespaces: list[str] = []
    report_name: str = "portcullis"
    cluster_report_name: str = "portcullis-cluster"
    lease_name: str = "portcullis-scan"
    lease_namespace: str = ""
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if self.objects_per_second <= 0 or self.writes_per_second <= 0 or self.burst < 1:
            raise ValueError("scan.objects_per_second and writes_per_second must be positive, burst at least 1")
        if self.budget_seconds <= 0 or self.rescan_interval < 0:
            raise ValueError("scan.budget_seconds must be positive and rescan_interval not negative")
        if not (self.lease_duration > self.renew_deadline > self.retry_period > 0):
            raise ValueError("scan: lease_duration > renew_deadline > retry_period > 0 is required (client-go)")
        if not self.report_name or not self.cluster_report_name or not self.lease_name:
            raise ValueError("scan.report_name, cluster_report_name and lease_name must not be empty")
