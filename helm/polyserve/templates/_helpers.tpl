{{/*
Names. Every object's name starts with the release name (or fullnameOverride): the operator's
objects are PREFIX-operator, the webhook's certificate objects PREFIX-webhook(-tls) and
PREFIX-selfsigned. With the release "polyserve" they are the names manifests/ uses, so the
two installs render the same objects (a test compares them).
*/}}
{{- define "polyserve.prefix" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "polyserve.fullname" -}}
{{- printf "%s-operator" (include "polyserve.prefix" .) }}
{{- end }}

{{- define "polyserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "polyserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: the existing ServiceAccount the operator runs as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels of every object; the selector's alone never changes between releases. */}}
{{- define "polyserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: polyserve
{{- end }}

{{- define "polyserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polyserve.fullname" . }}
{{- end }}

{{- define "polyserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The webhook's in-cluster host name: the Service's DNS name. */}}
{{- define "polyserve.webhookHost" -}}
{{- printf "%s.%s.svc" (include "polyserve.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
One environment variable from a map's key, when the key is set and not null: strings as
they are, anything else as JSON (pydantic-settings reads lists and maps as JSON).
Called as (list NAME MAP KEY).
*/}}
{{- define "polyserve.env" -}}
{{- $name := index . 0 }}
{{- $map := index . 1 }}
{{- $key := index . 2 }}
{{- if hasKey $map $key }}
{{- $value := index $map $key }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ $value | toJson | quote }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where helm test runs: tests.namespace, else the first watched namespace, else the release's. */}}
{{- define "polyserve.testNamespace" -}}
{{- if .Values.tests.namespace }}
{{- .Values.tests.namespace }}
{{- else if .Values.watchNamespaces }}
{{- first .Values.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}
