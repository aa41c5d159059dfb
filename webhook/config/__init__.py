"""Typed, validated settings from one YAML file, shared by the webhook, CI and the monitor.

Every section is a strict record (unknown keys are errors); with no file at all the defaults
work: enforce Pod Security ``baseline``, warn on ``restricted``, latest version.
"""

from __future__ import annotations

import re
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from webhook import errors
from webhook.config.admission import CheckSettings, Exemption, InputLimits, NamespaceSettings
from webhook.config.audit import AuditConfig
from webhook.config.base import Section
from webhook.config.images import ImagesConfig
from webhook.config.kubernetes import KubernetesConfig
from webhook.config.monitor import MonitorConfig
from webhook.config.policy import PolicyConfig
from webhook.config.privilege import PrivilegeConfig, RuntimeClassConfig
from webhook.config.quota import QuotaConfig
from webhook.config.scan import ScanConfig
from webhook.config.server import ServerConfig
from webhook.core import decision
from webhook.core.decision import Mode

__all__ = ["CheckSettings", "Config", "Exemption", "NamespaceSettings", "load", "parse"]

# The checks the webhook knows, in the order they run and report.
CHECK_IDS: tuple[str, ...] = ("privilege", "runtimeclass", "images", "gpu", "rego")


class Config(Section, frozen=True):
    server: ServerConfig = ServerConfig()
    checks: dict[str, CheckSettings] = {}
    exemptions: list[Exemption] = []
    namespaces: dict[str, NamespaceSettings] = {}
    default_namespace: str = "default"
    # Namespace label that overrides a check's mode: portcullis.dev/<check>=enforce|warn|audit|off.
    mode_label_prefix: str = "portcullis.dev/"
    # What such a label may do. Whoever may label a namespace is often not who may set policy:
    # tighten_only lets a label make a check stricter than configured, never weaker; any lets it
    # relax too (off, audit, warn); ignore takes modes from this file only.
    mode_labels: Literal["any", "tighten_only", "ignore"] = "tighten_only"
    # The largest pod spec judged (containers, volumes, env entries); larger ones are denied.
    limits: InputLimits = InputLimits()
    privilege: PrivilegeConfig = PrivilegeConfig()
    runtimeclass: RuntimeClassConfig = RuntimeClassConfig()
    images: ImagesConfig = ImagesConfig()
    quota: QuotaConfig = QuotaConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    monitor: MonitorConfig = MonitorConfig()
    scan: ScanConfig = ScanConfig()
    # Directory relative paths in the file are resolved against (set by ``load``).
    base_dir: str = "."

    def __post_init__(self) -> None:
        unknown = sorted(set(self.checks) - set(CHECK_IDS))
        if unknown:
            raise ValueError(f"unknown check {unknown[0]!r} under `checks` (known: {', '.join(CHECK_IDS)})")
        quota, kube = self.quota, self.kubernetes
        blind = max(quota.max_staleness, kube.watch_idle_timeout + kube.request_timeout)
        if quota.quotas and quota.reservation_ttl <= blind:
            raise ValueError(
                f"quota.reservation_ttl ({quota.reservation_ttl:g}s) must be longer than the pod watch can lag "
                f"unnoticed: max(quota.max_staleness, kubernetes.watch_idle_timeout + kubernetes.request_timeout) "
                f"= {blind:g}s; else an admitted pod's reservation can expire before the watch counts the pod, "
                "and the quota admits past its limit"
            )

    def check_settings(self, check_id: str) -> CheckSettings:
        return self.checks.get(check_id) or _DEFAULT_SETTINGS

    def resolve_path(self, path: str) -> Path:
        """A path from the config file, relative to the file's directory."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def mode_for(self, check_id: str, namespace_labels: dict[str, str] | Any) -> Mode:
        """The check's mode for a namespace: the configured one, or its label's as ``mode_labels`` allows."""
        configured = self.check_settings(check_id).mode
        prefix = self.mode_label_prefix
        if not prefix or not namespace_labels or self.mode_labels == "ignore":
            return configured
        label = namespace_labels.get(prefix + check_id)
        if label not in _MODES:
            return configured
        wanted = Mode(label)
        if self.mode_labels == "tighten_only" and decision.weaker(wanted, configured) is wanted:
            return configured  # the label asks for the same mode or a weaker one
        return wanted


_DEFAULT_SETTINGS = CheckSettings()
_MODES = {m.value for m in Mode}


def parse(data: Any, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a decoded YAML/JSON document into ``Config``; raise ``ConfigError`` naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise errors.ConfigError(f"{source}: the config must be a mapping of sections, got {type(data).__name__}")
    checks = data.get("checks")
    if isinstance(checks, dict):  # before the types: `checks: {bogus: 1}` is a wrong name, not a wrong type
        unknown = [key for key in checks if key not in CHECK_IDS]
        if unknown:
            raise errors.ConfigError(f"{source}: unknown check `checks.{unknown[0]}` (allowed: {', '.join(CHECK_IDS)})")
    if base_dir is not None:
        data = {**data, "base_dir": str(base_dir)}
    try:
        return msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise errors.ConfigError(f"{source}: {_explain(str(exc), data)}") from exc


def load(path: str | Path | None) -> Config:
    """Read the config file (``None`` → defaults)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise errors.ConfigError(f"{where}: invalid YAML: {problem}") from exc
    except ValueError as exc:  # PyYAML's scalar constructors (e.g. a timestamp 2001-13-01)
        raise errors.ConfigError(f"{path}: invalid YAML value: {exc}") from exc
    except RecursionError as exc:
        raise errors.ConfigError(f"{path}: YAML nested too deeply") from exc
    return parse(data, source=str(path), base_dir=path.resolve().parent)


# msgspec leaves out " - at `$`" for the top level.
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`(?: - at `(?P<at>[^`]+)`)?")
_PATH = re.compile(r"\.([^.\[\]]+)|\[([^\]]*)\]")
_PLAIN_KEY = re.compile(r"[^.\[\]`]+")  # a key that reads back unambiguously after a dot


def _explain(message: str, data: Any = None) -> str:
    """Turn msgspec's message into one that names the key and what is allowed there."""
    match = _UNKNOWN.search(message)
    if match:
        parent = _located(match.group("at") or "$", data)
        node = _type_at(parent)
        allowed = (
            sorted(f.name for f in msgspec.structs.fields(node) if f.name != "base_dir") if _is_struct(node) else []
        )
        key = _dotted(parent, match.group("field"))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key `{key}`{hint}"
    key_at = re.search(r" - at `key` in `(?P<at>[^`]+)`$", message)
    if key_at:  # a mapping key that is not text (YAML reads `1:` or `true:` as a number or a bool)
        where = _dotted(_located(key_at.group("at"), data))
        return f"key `{where}`: a key there is not text ({message[: key_at.start()]}); quote it"
    at = re.search(r" - at `(?P<at>[^`]+)`$", message)
    if at:
        where = _located(at.group("at"), data)
        values = _allowed_values(_type_at(where))
        hint = f" (allowed: {', '.join(values)})" if values else ""
        return f"key `{_dotted(where)}`: {message[: at.start()]}{hint}"
    return message


def _located(at: str, data: Any) -> str:
    """msgspec's path with each mapping key it leaves out (``[...]``) filled in from ``data``.

    The key is the first one whose value does not validate against the mapping's value type, so
    the message names ``namespaces.prod`` rather than ``namespaces.*``.
    """
    out, node = "$", data
    for name, index in _PATH.findall(at):
        if name:
            out += f".{name}"
            node = node.get(name) if isinstance(node, dict) else None
            continue
        if index == "..." and isinstance(node, dict):
            value_type = _type_at(out + "[...]")
            key = next((k for k, v in node.items() if not _valid(v, value_type)), None)
            if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
                out += f".{key}"
                node = node[key]
                continue
        out += f"[{index}]"
        node = node[int(index)] if isinstance(node, list) and index.isdigit() and int(index) < len(node) else None
    return out


def _valid(value: Any, tp: Any) -> bool:
    if tp is None:
        return True
    try:
        msgspec.convert(value, tp, strict=True)
    except (msgspec.ValidationError, TypeError, ValueError):
        return False
    return True


def _dotted(at: str, leaf: str | None = None) -> str:
    path = at.removeprefix("$").lstrip(".")
    path = path.replace("[...]", ".*")  # a key msgspec did not name and we could not find
    return ".".join(p for p in (path, leaf) if p)


def _type_at(at: str) -> Any:
    """The declared type of the config field at msgspec's path (``$.checks[...].mode``)."""
    node: Any = Config
    for name, _index in _PATH.findall(at):
        if name and _is_struct(node):
            fields = {f.name: f.type for f in msgspec.structs.fields(node)}
            node = _unwrap(fields.get(name))
        else:
            node = _unwrap(getattr(node, "__args__", (None,))[-1]) if node is not None else None
    return node


def _allowed_values(tp: Any) -> list[str]:
    """The values a closed set (an Enum or a Literal, possibly optional) admits."""
    for candidate in (tp, *getattr(tp, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, Enum):
            return [str(m.value) for m in candidate]
        if typing.get_origin(candidate) is Literal:
            return [str(v) for v in typing.get_args(candidate)]
    return []


def _is_struct(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, msgspec.Struct)


def _unwrap(tp: Any) -> Any:
    if tp is None or _is_struct(tp):
        return tp
    args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
    if getattr(tp, "__origin__", None) in (list, dict):
        return tp  # containers are unwrapped by the caller on '[...]'
    return _unwrap(args[0]) if len(args) == 1 else tp
