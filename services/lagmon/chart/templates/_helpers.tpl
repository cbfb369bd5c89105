{{/* Names and labels. Self-contained on purpose: the lagmon team installs and changes this
chart alone (deploy/k8s/README.md explains why there is no shared library chart). */}}

{{- define "lagmon.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lagmon.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: blog-platform
{{- end -}}

{{/* The serving pods (Deployment, Service, PDB, NetworkPolicy, ServiceMonitor). */}}
{{- define "lagmon.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "lagmon.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The settings, by the env names lagmon.settings.Settings reads (prefix LAGMON_). */}}
{{- define "lagmon.env" -}}
- name: LAGMON_HOST
  value: "0.0.0.0"
- name: LAGMON_PORT
  value: {{ .Values.port | quote }}
- name: LAGMON_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: LAGMON_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: LAGMON_TOPICS
  value: {{ .Values.kafka.topics | toJson | quote }}
- name: LAGMON_POLL_INTERVAL_S
  value: {{ .Values.pollIntervalSeconds | quote }}
{{- include "lagmon.kafkaSecurityEnv" . }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "lagmon.kafkaSecurityEnv" }}
- name: LAGMON_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: LAGMON_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: LAGMON_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: LAGMON_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: LAGMON_KAFKA_SSL_CAFILE
  value: /etc/blog/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- end -}}

{{- define "lagmon.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: kafka-ca
  mountPath: /etc/blog/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "lagmon.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: kafka-ca
  secret:
    secretName: {{ required "kafka.tls.caSecret is required for SSL" .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- end -}}

{{- define "lagmon.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "lagmon.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* A NetworkPolicy peer: pods with `podLabels` in namespace `namespace`. */}}
{{- define "lagmon.peer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .podLabels | nindent 6 }}
{{- end -}}
