{{/* The release's full name: the release name, with "-coral" unless it already says coral. */}}
{{- define "coral.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "coral.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: coral
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels selecting the operator's pods. */}}
{{- define "coral.operatorSelector" -}}
app.kubernetes.io/name: coral-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's ServiceAccount: created, or named and existing. */}}
{{- define "coral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "coral.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's image. */}}
{{- define "coral.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/*
Whether to create Prometheus Operator objects: always, never, or when the cluster serves
monitoring.coreos.com/v1. Prints "true" or nothing.
*/}}
{{- define "coral.prometheusOperator" -}}
{{- $mode := .Values.monitoring.prometheusOperator.mode -}}
{{- if or (eq $mode "always") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/*
Whether the operator pods carry prometheus.io annotations: when no ServiceMonitor scrapes them
(no Prometheus Operator, or no metrics Service for it to follow). Prints "true" or nothing.
*/}}
{{- define "coral.annotateOperator" -}}
{{- if not (and (include "coral.prometheusOperator" .) .Values.metrics.service.enabled) -}}
true
{{- end -}}
{{- end -}}
