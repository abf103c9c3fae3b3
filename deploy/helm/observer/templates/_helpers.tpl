{{/* Names, labels and the facts several templates share: one place each. */}}

{{- define "observer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "observer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "observer.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "observer.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "observer.labels" -}}
app.kubernetes.io/name: {{ include "observer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "observer.extraLabels" . }}
{{- end -}}

{{/* Labels that do not select: chart, version, manager and the user's commonLabels. */}}
{{- define "observer.extraLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Every label of one component's objects and pods: its selector labels and the extra ones. */}}
{{- define "observer.componentLabels" -}}
{{ include "observer.selectorLabels" . }}
{{ include "observer.extraLabels" .root }}
{{- end -}}

{{/* Selector labels of one component (agent, insights, schema). */}}
{{- define "observer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "observer.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "observer.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "observer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "observer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the ClickHouse password, or "" when there is no password. */}}
{{- define "observer.clickhouseSecret" -}}
{{- if .Values.clickhouse.existingSecret -}}
{{- .Values.clickhouse.existingSecret -}}
{{- else if .Values.clickhouse.password -}}
{{- printf "%s-clickhouse" (include "observer.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "observer.clickhouseSecretKey" -}}
{{- if .Values.clickhouse.existingSecret -}}{{ .Values.clickhouse.existingSecretKey }}{{- else -}}password{{- end -}}
{{- end -}}

{{- define "observer.keySecret" -}}
{{- if .Values.keySecret.existingSecret -}}
{{- .Values.keySecret.existingSecret -}}
{{- else if .Values.keySecret.value -}}
{{- printf "%s-key-secret" (include "observer.fullname" .) -}}
{{- else -}}
{{- fail "keySecret: set keySecret.existingSecret (a Secret with the key `key-secret`) or keySecret.value. Every node must use the same secret, the one the registry's key fingerprints were made with, so the chart does not generate one." -}}
{{- end -}}
{{- end -}}

{{- define "observer.keySecretKey" -}}
{{- if .Values.keySecret.existingSecret -}}{{ .Values.keySecret.existingSecretKey }}{{- else -}}key-secret{{- end -}}
{{- end -}}

{{/* The ConfigMap holding registry.yaml, or "" when no registry is configured. */}}
{{- define "observer.registryConfigMap" -}}
{{- if .Values.registry.existingConfigMap -}}
{{- .Values.registry.existingConfigMap -}}
{{- else if .Values.registry.content -}}
{{- printf "%s-registry" (include "observer.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Whether anything needs ClickHouse; then its URL is required. */}}
{{- define "observer.needsClickhouse" -}}
{{- if or (has "clickhouse" .Values.agent.sinks) .Values.insights.enabled .Values.schemaJob.enabled -}}true{{- end -}}
{{- end -}}

{{- define "observer.clickhouseUrl" -}}
{{- required "clickhouse.url is required when the clickhouse sink, the insights runner or the schema job is enabled (e.g. http://clickhouse.observability.svc:8123)" .Values.clickhouse.url -}}
{{- end -}}

{{/* Settings shared by every observer container, from the config ConfigMap (its checksum rolls the pods). */}}
{{- define "observer.configEnv" -}}
- configMapRef:
    name: {{ include "observer.fullname" . }}-config
{{- end -}}

{{/* Mount of the ClickHouse password file and the argument pointing at it. */}}
{{- define "observer.clickhousePasswordArg" -}}
{{- if include "observer.clickhouseSecret" . -}}
- --clickhouse-password-file=/etc/observer/clickhouse/password
{{- end }}
{{- end -}}

{{- define "observer.clickhousePasswordMount" -}}
{{- if include "observer.clickhouseSecret" . -}}
- name: clickhouse-password
  mountPath: /etc/observer/clickhouse
  readOnly: true
{{- end }}
{{- end -}}

{{- define "observer.clickhousePasswordVolume" -}}
{{- if include "observer.clickhouseSecret" . -}}
- name: clickhouse-password
  secret:
    secretName: {{ include "observer.clickhouseSecret" . }}
    defaultMode: 256 # 0400, written in decimal: YAML 1.1 and 1.2 read a leading 0 differently
    items:
      - key: {{ include "observer.clickhouseSecretKey" . }}
        path: password
{{- end }}
{{- end -}}

{{/* The posture of containers that need no privilege at all (insights runner, schema job). */}}
{{- define "observer.restrictedPodSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "observer.restrictedContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
