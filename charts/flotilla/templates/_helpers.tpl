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

{{- /* What the operator reads and writes in a namespace it watches (no Secrets: it reads none).
A ClusterRole's rules in cluster mode, a Role's in each watched namespace otherwise. */ -}}
{{- define "flotilla.operatorRules" }}
  - apiGroups: [flotilla.dev]
    resources: [smallmodels]
    verbs: [get, list, watch, patch, update]
  - apiGroups: [flotilla.dev]
    resources: [smallmodels/status]
    verbs: [get, patch, update]
  - apiGroups: [batch]
    resources: [jobs]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [apps]
    resources: [deployments/scale]
    verbs: [get, patch, update]
  - apiGroups: [""]
    resources: [services, configmaps, persistentvolumeclaims]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch]
  - apiGroups: [policy]
    resources: [poddisruptionbudgets]
    verbs: [get, list, watch, create, patch, delete]
  # The model's Service has no selector: the operator writes its endpoints (only revisions
  # the rollout gives traffic).
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch, create, patch, delete]
  # Canary weights where the cluster serves the Gateway API.
  - apiGroups: [gateway.networking.k8s.io]
    resources: [httproutes]
    verbs: [get, list, watch, create, patch, delete]
  # list: the Warning Events of a claim that does not bind or a volume that does not attach
  # give the provisioner's words to the model's condition (reconcile/store.py).
  - apiGroups: ["", events.k8s.io]
    resources: [events]
    verbs: [list, create, patch]
{{- end }}

{{- /* Cluster-scoped reads kopf makes in either mode: the namespaces (to follow the watched
ones) and the CRDs (to notice a watched resource, e.g. HTTPRoute, appear). */ -}}
{{- define "flotilla.clusterReadRules" }}
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [get, list, watch]
  - apiGroups: [apiextensions.k8s.io]
    resources: [customresourcedefinitions]
    verbs: [get, list, watch]
{{- end }}
