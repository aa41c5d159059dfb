{{/*
The config file both faces read. The user's `config:` is passed through verbatim; the chart
owns only what it wires itself (listen address, TLS paths, the time budget derived from the
webhook's timeoutSeconds, with clientAuth the client CA path and the health port, audit paths,
GPU reservations shared through the API server whenever there is more than one replica, the
scan's settings) and prepends the monitor's exemption.
*/}}
{{- define "portcullis.configText" -}}
{{- $v := .Values }}
{{- $cfg := deepCopy $v.config }}
{{- $server := dict
      "listen" (printf "0.0.0.0:%d" (int $v.webhook.port))
      "tls_cert" "/etc/portcullis/tls/tls.crt"
      "tls_key" "/etc/portcullis/tls/tls.key"
      "timeout_seconds" $v.webhook.timeoutSeconds
      "margin_seconds" $v.webhook.marginSeconds }}
{{- if $v.webhook.clientAuth.enabled }}
{{- $_ := set $server "client_ca" (include "portcullis.clientCAFile" .) }}
{{- $_ := set $server "health_listen" (printf "0.0.0.0:%d" (int $v.webhook.healthPort)) }}
{{- end }}
{{- $_ := set $cfg "server" (mustMergeOverwrite (deepCopy (default dict (get $cfg "server"))) $server) }}
{{- $exemptions := list }}
{{- if and $v.monitor.enabled $v.monitor.exemption }}
{{- $exemptions = append $exemptions (dict
      "namespaces" (list .Release.Namespace)
      "service_accounts" (list (include "portcullis.monitorServiceAccount" .))
      "checks" (list "privilege")
      "reason" (printf "portcullis runtime monitor (DaemonSet %s-monitor, service account %s): needs host PID, BPF/PERFMON capabilities and the tracefs hostPath; exempt from the privilege check only, for that service account in namespace %s only" (include "portcullis.fullname" .) (include "portcullis.monitorServiceAccount" .) .Release.Namespace)) }}
{{- end }}
{{- range (default list (get $cfg "exemptions")) }}
{{- $exemptions = append $exemptions . }}
{{- end }}
{{- if $exemptions }}
{{- $_ := set $cfg "exemptions" $exemptions }}
{{- end }}
{{- $quota := deepCopy (default dict (get $cfg "quota")) }}
{{- if not (hasKey $quota "coordination_namespace") }}
{{- $_ := set $quota "coordination_namespace" .Release.Namespace }}
{{- $_ := set $cfg "quota" $quota }}
{{- end }}
{{- /* Replicas must share GPU reservations, or together they over-admit (validate.yaml refuses local). */}}
{{- if and (gt (int $v.webhook.replicas) 1) (not (hasKey $quota "coordination")) }}
{{- $_ := set $quota "coordination" "apiserver" }}
{{- $_ := set $cfg "quota" $quota }}
{{- end }}
{{- if $v.audit.enabled }}
{{- $audit := dict
      "directory" "/var/lib/portcullis/audit"
      "signing_key" (printf "/etc/portcullis/audit-key/%s" $v.audit.signingKey.key) }}
{{- with $v.audit.origin }}{{ $_ := set $audit "origin" . }}{{ end }}
{{- with $v.audit.witnesses }}{{ $_ := set $audit "witnesses" . }}{{ end }}
{{- $_ := set $cfg "audit" (mustMergeOverwrite (deepCopy (default dict (get $cfg "audit"))) $audit) }}
{{- end }}
{{- if $v.scan.enabled }}
{{- $scan := dict
      "enabled" true
      "objects_per_second" $v.scan.objectsPerSecond
      "rescan_interval" $v.scan.rescanInterval
      "lease_namespace" .Release.Namespace }}
{{- with $v.scan.excludeNamespaces }}{{ $_ := set $scan "exclude_namespaces" . }}{{ end }}
{{- $_ := set $cfg "scan" (mustMergeOverwrite (deepCopy (default dict (get $cfg "scan"))) $scan) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
