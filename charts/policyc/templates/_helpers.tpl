{{- define "policyc.name" -}}policyc{{- end -}}

{{- define "policyc.fullname" -}}
{{- if contains "policyc" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-policyc" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "policyc.labels" -}}
app.kubernetes.io/name: policyc
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "policyc.selectorLabels" -}}
app.kubernetes.io/name: policyc
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
