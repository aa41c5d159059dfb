{{/* Names, labels and shared fragments. */}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name; short enough for the longest suffix (-certgen-renew). */}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: webhook, monitor or certgen. */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portcullis.componentLabels" -}}
{{ include "portcullis.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portcullis.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "portcullis.webhookServiceAccount" -}}
{{- default (include "portcullis.fullname" .) .Values.webhook.serviceAccount.name }}
{{- end }}

{{- define "portcullis.monitorServiceAccount" -}}
{{- default (printf "%s-monitor" (include "portcullis.fullname" .)) .Values.monitor.serviceAccount.name }}
{{- end }}

{{- define "portcullis.tlsSecret" -}}
{{- default (printf "%s-tls" (include "portcullis.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* Where the client CA bundle (webhook.clientAuth) is mounted, and the file the server reads. */}}
{{- define "portcullis.clientCADir" -}}
/etc/portcullis/client-ca
{{- end }}

{{- define "portcullis.clientCAFile" -}}
{{- printf "%s/%s" (include "portcullis.clientCADir" .) .Values.webhook.clientAuth.key }}
{{- end }}

{{/* The kubeconfig user name the API server picks this webhook's credentials by: the service's
DNS name, with ":port" unless the service port is 443. */}}
{{- define "portcullis.kubeconfigUser" -}}
{{- if eq (int .Values.webhook.service.port) 443 }}
{{- include "portcullis.serviceDNS" . }}
{{- else }}
{{- printf "%s:%d" (include "portcullis.serviceDNS" .) (int .Values.webhook.service.port) }}
{{- end }}
{{- end }}

{{/* The in-cluster DNS name the API server calls; the serving certificate is issued for it. */}}
{{- define "portcullis.serviceDNS" -}}
{{- printf "%s.%s.svc" (include "portcullis.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Webhook configurations are cluster-scoped: the namespace in the name keeps two releases apart. */}}
{{- define "portcullis.validatingName" -}}
{{- compact (list (include "portcullis.fullname" .) .Release.Namespace "validate.portcullis.dev") | join "." }}
{{- end }}

{{- define "portcullis.mutatingName" -}}
{{- compact (list (include "portcullis.fullname" .) .Release.Namespace "mutate.portcullis.dev") | join "." }}
{{- end }}

{{- define "portcullis.configMapName" -}}
{{- printf "%s-config" (include "portcullis.fullname" .) }}
{{- end }}

{{- define "portcullis.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "portcullis.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{- define "portcullis.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "portcullis.fullname" .)) .Values.rules.existingConfigMap }}
{{- end }}

{{/* Namespaces the webhook never sees: kube-system, the release namespace, the user's list. */}}
{{- define "portcullis.excludedNamespaces" -}}
{{- $ns := list "kube-system" }}
{{- if not .Values.webhook.includeReleaseNamespace }}
{{- $ns = append $ns .Release.Namespace }}
{{- end }}
{{- range .Values.webhook.excludeNamespaces }}
{{- $ns = append $ns . }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/* Policy files: the chart's, then the user's (same name: the user's wins). */}}
{{- define "portcullis.policyFiles" -}}
{{- $files := dict }}
{{- if .Values.policies.useChartFiles }}
{{- range $path, $_ := .Files.Glob "files/policies/*.rego" }}
{{- $_ := set $files (base $path) ($.Files.Get $path) }}
{{- end }}
{{- end }}
{{- range $name, $text := .Values.policies.files }}
{{- $_ := set $files $name $text }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{- define "portcullis.ruleFiles" -}}
{{- $files := dict }}
{{- if .Values.rules.useChartFiles }}
{{- range $path, $_ := .Files.Glob "files/rules/*.yaml" }}
{{- $_ := set $files (base $path) ($.Files.Get $path) }}
{{- end }}
{{- end }}
{{- range $name, $text := .Values.rules.files }}
{{- $_ := set $files $name $text }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* Restricted-profile security context shared by the webhook and the certificate Job. */}}
{{- define "portcullis.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "portcullis.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.webhook.runAsUser }}
runAsGroup: {{ .Values.webhook.runAsGroup }}
fsGroup: {{ .Values.webhook.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* "true" when a policies ConfigMap is mounted (the user's or a non-empty generated one). */}}
{{- define "portcullis.hasPolicies" -}}
{{- if or .Values.policies.existingConfigMap (include "portcullis.policyFiles" . | fromJson) }}true{{ end }}
{{- end }}

{{- define "portcullis.hasRules" -}}
{{- if or .Values.rules.existingConfigMap (include "portcullis.ruleFiles" . | fromJson) }}true{{ end }}
{{- end }}

{{/* Secret rules of the certificate Job: create (cannot be limited by name), then only its own Secret. */}}
{{- define "portcullis.certgenSecretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ . | quote }}]
  verbs: ["get", "update", "patch"]
{{- end }}

{{/* Pod template of the certificate Job and CronJob; args: root, serviceAccount, webhooks. */}}
{{- define "portcullis.certgenPod" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "portcullis.selectorLabels" (dict "root" $root "component" "certgen") | nindent 4 }}
spec:
  serviceAccountName: {{ .serviceAccount }}
  automountServiceAccountToken: true
  restartPolicy: OnFailure
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "portcullis.restrictedPodSecurityContext" $root | nindent 4 }}
  containers:
    - name: certgen
      image: {{ include "portcullis.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - certs
        - --dns
        - {{ include "portcullis.serviceDNS" $root }}
        - --out
        - /tmp/certs
        - --k8s-secret
        - {{ printf "%s/%s" $root.Release.Namespace (include "portcullis.tlsSecret" $root) }}
        {{- if .webhooks }}
        - --k8s-webhooks
        - {{ join "," .webhooks }}
        {{- end }}
        - --validity-days
        - {{ $root.Values.tls.hook.validityDays | quote }}
        - --renew-before-days
        - {{ $root.Values.tls.hook.renewBeforeDays | quote }}
      resources:
        {{- toYaml $root.Values.tls.hook.resources | nindent 8 }}
      securityContext:
        {{- include "portcullis.restrictedContainerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: certs
          mountPath: /tmp/certs
  volumes:
    # Memory-backed: the CA key never touches the node's disk.
    - name: certs
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
{{- end }}

{{/* What both webhooks are sent: pods, their ephemeral containers, every workload kind with a pod template. */}}
{{- define "portcullis.webhookRules" -}}
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["pods", "pods/ephemeralcontainers", "replicationcontrollers", "podtemplates"]
  scope: Namespaced
- apiGroups: ["apps"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
  scope: Namespaced
- apiGroups: ["batch"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["jobs", "cronjobs"]
  scope: Namespaced
{{- end }}

{{/* Who is never sent to the webhooks: see webhooks.yaml. */}}
{{- define "portcullis.webhookSelectors" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ include "portcullis.excludedNamespaces" . }}
    {{- with .Values.webhook.namespaceSelectorExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
matchConditions:
  - name: exclude-system-namespaces
    expression: {{ printf "!(request.namespace in %s)" (include "portcullis.excludedNamespaces" . | fromJsonArray | toJson) | quote }}
  {{- with .Values.webhook.extraMatchConditions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
