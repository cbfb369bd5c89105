{{/* Names and labels. Self-contained on purpose: the @@name@@ team installs and changes this
chart alone (deploy/k8s/README.md explains why there is no shared library chart). */}}

{{- define "@@name@@.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "@@name@@.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: blog-platform
{{- end -}}

{{/* The serving pods (Deployment, Service, PDB, NetworkPolicy); the migration Job's pods carry
component=migrate instead, so the Service never routes to them. */}}
{{- define "@@name@@.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "@@name@@.migrateSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: migrate
{{- end -}}

{{- define "@@name@@.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The settings, by the env names @@name@@.settings.Settings reads (prefix @@NAME@@_). */}}
{{- define "@@name@@.env" -}}
- name: @@NAME@@_HOST
  value: "0.0.0.0"
- name: @@NAME@@_PORT
  value: {{ .Values.port | quote }}
- name: @@NAME@@_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: @@NAME@@_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: @@NAME@@_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: @@NAME@@_GROUP_ID
  value: {{ .Values.kafka.consumerGroup | quote }}
- name: @@NAME@@_MAX_BATCH
  value: {{ .Values.kafka.maxBatch | quote }}
{{- include "@@name@@.kafkaSecurityEnv" . }}
- name: @@NAME@@_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required" .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
- name: @@NAME@@_MIGRATE_ON_START
  value: {{ not .Values.migrations.hookJob | quote }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "@@name@@.kafkaSecurityEnv" }}
- name: @@NAME@@_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: @@NAME@@_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: @@NAME@@_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: @@NAME@@_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: @@NAME@@_KAFKA_SSL_CAFILE
  value: /etc/blog/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- end -}}

{{- define "@@name@@.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: kafka-ca
  mountPath: /etc/blog/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.database.caSecret }}
- name: db-ca
  mountPath: /etc/blog/db-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "@@name@@.volumes" -}}
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
{{- if .Values.database.caSecret }}
- name: db-ca
  secret:
    secretName: {{ .Values.database.caSecret }}
    items:
      - key: {{ .Values.database.caKey }}
        path: {{ .Values.database.caKey }}
{{- end }}
{{- end -}}

{{- define "@@name@@.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "@@name@@.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* A NetworkPolicy peer: pods with `podLabels` in namespace `namespace`. */}}
{{- define "@@name@@.peer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .podLabels | nindent 6 }}
{{- end -}}
