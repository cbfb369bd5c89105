{{/* Names and labels. Self-contained on purpose: the indexer team installs and changes this
chart alone (deploy/k8s/README.md explains why there is no shared library chart). */}}

{{- define "indexer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "indexer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: blog-platform
{{- end -}}

{{/* The serving pods (Deployment, Service, PDB, NetworkPolicy); the migration Job's pods carry
component=migrate instead, so the Service never routes to them. */}}
{{- define "indexer.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "indexer.migrateSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: migrate
{{- end -}}

{{- define "indexer.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The settings, by the env names indexer.settings.IndexerSettings reads (prefix INDEXER_). */}}
{{- define "indexer.env" -}}
- name: INDEXER_HOST
  value: "0.0.0.0"
- name: INDEXER_PORT
  value: {{ .Values.port | quote }}
- name: INDEXER_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: INDEXER_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: INDEXER_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: INDEXER_GROUP_ID
  value: {{ .Values.kafka.consumerGroup | quote }}
- name: INDEXER_MAX_BATCH
  value: {{ .Values.kafka.maxBatch | quote }}
{{- include "indexer.kafkaSecurityEnv" . }}
- name: INDEXER_ES_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "elasticsearch.existingSecret is required" .Values.elasticsearch.existingSecret }}
      key: {{ .Values.elasticsearch.urlKey }}
- name: INDEXER_INDEX_ALIAS
  value: {{ .Values.elasticsearch.indexAlias | quote }}
{{- if .Values.elasticsearch.caSecret }}
# The Elasticsearch client verifies TLS against Python's default trust store, which this points
# at ECK's CA (plus certifi's bundle, which the client always adds).
- name: SSL_CERT_FILE
  value: /etc/blog/es-ca/{{ .Values.elasticsearch.caKey }}
{{- end }}
- name: INDEXER_MIGRATE_ON_START
  value: {{ not .Values.migrations.hookJob | quote }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "indexer.kafkaSecurityEnv" }}
- name: INDEXER_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: INDEXER_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: INDEXER_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: INDEXER_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: INDEXER_KAFKA_SSL_CAFILE
  value: /etc/blog/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- end -}}

{{- define "indexer.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if hasSuffix "SSL" .Values.kafka.securityProtocol }}
- name: kafka-ca
  mountPath: /etc/blog/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.elasticsearch.caSecret }}
- name: es-ca
  mountPath: /etc/blog/es-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "indexer.volumes" -}}
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
{{- if .Values.elasticsearch.caSecret }}
- name: es-ca
  secret:
    secretName: {{ .Values.elasticsearch.caSecret }}
    items:
      - key: {{ .Values.elasticsearch.caKey }}
        path: {{ .Values.elasticsearch.caKey }}
{{- end }}
{{- end -}}

{{- define "indexer.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "indexer.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* A NetworkPolicy peer: pods with `podLabels` in namespace `namespace`. */}}
{{- define "indexer.peer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .podLabels | nindent 6 }}
{{- end -}}
