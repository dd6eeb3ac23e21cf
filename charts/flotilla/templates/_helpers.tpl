{{- define "flotilla.name" -}}flotilla{{- end -}}
{{- define "flotilla.fullname" -}}{{ .Release.Name }}-flotilla{{- end -}}
{{- define "flotilla.labels" -}}
app.kubernetes.io/name: flotilla
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "flotilla.selector" -}}
app.kubernetes.io/name: flotilla
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- /* The gateway's own name label, so the operator's selector never matches its pods. */ -}}
{{- define "flotilla.gatewayLabels" -}}
app.kubernetes.io/name: flotilla-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "flotilla.gatewaySelector" -}}
app.kubernetes.io/name: flotilla-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
