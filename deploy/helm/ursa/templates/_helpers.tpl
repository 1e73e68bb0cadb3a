{{/*
Names. The control plane's objects have fixed names (one release per
namespace): the Service must be `ursa-control-plane`, which injected sidecars
and the webhook configurations the control plane registers point at.
*/}}
{{- define "ursa.cpName" -}}ursa-control-plane{{- end -}}
{{- define "ursa.ingressName" -}}ursa-ingress{{- end -}}
{{/* Cluster-scoped objects carry the namespace: one release per namespace. */}}
{{- define "ursa.clusterName" -}}ursa-control-plane-{{ .Release.Namespace }}{{- end -}}

{{- define "ursa.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ursa.labels" -}}
app.kubernetes.io/name: ursa
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ursa.cpSelector" -}}
app.kubernetes.io/name: ursa
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "ursa.ingressSelector" -}}
app.kubernetes.io/name: ursa
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ingress
{{- end -}}

{{/* The names the control plane's Service is reached by in the cluster. */}}
{{- define "ursa.serviceSANs" -}}
{{- $svc := include "ursa.cpName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- concat $names .Values.controlPlane.extraSANs | toJson -}}
{{- end -}}

{{/* The zone CP's xDS address, for the ingress. */}}
{{- define "ursa.xdsAddress" -}}
grpcs://{{ include "ursa.cpName" . }}.{{ .Release.Namespace }}.svc:5678
{{- end -}}

{{- define "ursa.zoneSecretName" -}}
{{- .Values.zone.tokenSecret | default "ursa-zone-token" -}}
{{- end -}}

{{- define "ursa.storeSecretName" -}}
{{- .Values.postgres.secretName | default "ursa-global-store" -}}
{{- end -}}

{{/*
Checks of the values, run by every template that depends on them: a bad value
fails `helm install` and `helm template` with a message naming it.
*/}}
{{- define "ursa.validate" -}}
{{- $mode := .Values.controlPlane.mode -}}
{{- if not (has $mode (list "zone" "global")) -}}
{{- fail (printf "controlPlane.mode must be zone or global, not %q" $mode) -}}
{{- end -}}
{{- if eq $mode "zone" -}}
{{- if not .Values.zone.name -}}
{{- fail "zone.name is required in zone mode (a DNS-1123 label, e.g. --set zone.name=zone-1)" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" .Values.zone.name) -}}
{{- fail (printf "zone.name %q is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)" .Values.zone.name) -}}
{{- end -}}
{{- with .Values.zone.global.kdsAddress -}}
{{- if not (hasPrefix "grpcs://" .) -}}
{{- fail (printf "zone.global.kdsAddress %q must be grpcs://HOST:PORT" .) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.zone.global.kdsAddress (not (or .Values.zone.token .Values.zone.tokenSecret)) -}}
{{- fail "zone.global.kdsAddress is set but no zone token: set zone.tokenSecret (a Secret with the key `token`) or zone.token (ursactl generate zone-token --zone NAME)" -}}
{{- end -}}
{{- else -}}
{{- if not (or .Values.postgres.secretName .Values.postgres.url) -}}
{{- fail "global mode needs PostgreSQL: set postgres.secretName (a Secret holding the postgres:// URL) or postgres.url" -}}
{{- end -}}
{{- with .Values.postgres.url -}}
{{- if not (or (hasPrefix "postgres://" .) (hasPrefix "postgresql://" .)) -}}
{{- fail "postgres.url must be a postgres:// URL" -}}
{{- end -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- fail "ingress.enabled is for zone mode: a global has no zone ingress" -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.ingress.service.type (list "LoadBalancer" "NodePort")) -}}
{{- fail (printf "ingress.service.type must be LoadBalancer or NodePort, not %q" .Values.ingress.service.type) -}}
{{- end -}}
{{- end -}}

{{/* The restricted security context of every container the chart runs. */}}
{{- define "ursa.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ursa.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- /*
The prometheus.io annotations Prometheus's Kubernetes discovery reads,
pointing at a pod's /metrics on port: none when the pod's annotations (the
values' podAnnotations) say anything of prometheus.io/ themselves.
*/}}
{{- define "ursa.scrapeAnnotations" -}}
{{- $own := false -}}
{{- range $k, $v := .annotations -}}
{{- if hasPrefix "prometheus.io/" $k -}}{{- $own = true -}}{{- end -}}
{{- end -}}
{{- if not $own -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}
