{{/* Names, labels and shared pieces of the iot-cloud chart. */}}

{{- define "iot-cloud.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: `<release>` when it already contains the chart name. Kept to
40 characters so that suffixes like `-redpanda-headless` stay within 63. */}}
{{- define "iot-cloud.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "iot-cloud.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "iot-cloud.labels" -}}
helm.sh/chart: {{ include "iot-cloud.chart" . }}
app.kubernetes.io/name: {{ include "iot-cloud.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: iot-cloud
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "bridge"). */}}
{{- define "iot-cloud.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iot-cloud.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects and pods. */}}
{{- define "iot-cloud.componentLabels" -}}
{{ include "iot-cloud.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* image reference: (dict "ctx" $ "image" .Values.bridge.image). */}}
{{- define "iot-cloud.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion | toString) }}
{{- end }}

{{- define "iot-cloud.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "iot-cloud.fullname" .)) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "iot-cloud.workerServiceAccount" -}}
{{- default (printf "%s-worker" (include "iot-cloud.fullname" .)) .Values.workers.serviceAccount.name }}
{{- end }}

{{/* Kafka bootstrap servers: the bundled Redpanda, or the external cluster. */}}
{{- define "iot-cloud.kafkaBootstrap" -}}
{{- if .Values.redpanda.enabled }}
{{- printf "%s-redpanda.%s.svc:9092" (include "iot-cloud.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "kafka.bootstrap is required when redpanda.enabled=false" .Values.kafka.bootstrap }}
{{- end }}
{{- end }}

{{/* MQTT broker URL of the bridge and the simulator: the bundled Mosquitto's service listener
(TLS, port 8884, on the ClusterIP-only Service `<fullname>-mosquitto-internal`), or the external
broker. */}}
{{- define "iot-cloud.mqttUrl" -}}
{{- if .Values.mosquitto.enabled }}
{{- printf "mqtts://%s-mosquitto-internal.%s.svc:8884" (include "iot-cloud.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "mqtt.url is required when mosquitto.enabled=false" .Values.mqtt.url }}
{{- end }}
{{- end }}

{{/* Address devices connect to: the bundled Mosquitto's device listener (TLS, client
certificate). */}}
{{- define "iot-cloud.mqttDeviceAddress" -}}
{{- printf "%s-mosquitto.%s.svc:%d" (include "iot-cloud.fullname" .) .Release.Namespace (int .Values.mosquitto.service.port) }}
{{- end }}

{{/* Secret of the broker's server certificate (tls.crt, tls.key, ca.crt): the given one, or the
chart's generated `<fullname>-mosquitto-tls`. */}}
{{- define "iot-cloud.mosquittoTlsSecret" -}}
{{- .Values.mosquitto.tls.secretName | default (printf "%s-mosquitto-tls" (include "iot-cloud.fullname" .)) }}
{{- end }}

{{/* Secret of the device CA (tls.crt, tls.key, ca.crt): the given one, or the chart's generated
`<fullname>-device-ca`. */}}
{{- define "iot-cloud.deviceCASecret" -}}
{{- .Values.mosquitto.deviceCA.secretName | default (printf "%s-device-ca" (include "iot-cloud.fullname" .)) }}
{{- end }}

{{/* ConfigMap of the device CRL (key crl.pem): the given one, or the chart's `<fullname>-device-crl`. */}}
{{- define "iot-cloud.deviceCRLConfigMap" -}}
{{- .Values.mosquitto.deviceCRL.configMapName | default (printf "%s-device-crl" (include "iot-cloud.fullname" .)) }}
{{- end }}

{{/* Secret of a client's MQTT credentials (keys username, password): (dict "ctx" $ "component"
"bridge"). The given `<component>.mqttCredentials.secretName`; else, with the bundled Mosquitto, the
chart's generated `<fullname>-<component>-mqtt`; else (external broker) none: empty. */}}
{{- define "iot-cloud.mqttCredentialsSecret" -}}
{{- $c := index .ctx.Values .component }}
{{- if $c.mqttCredentials.secretName }}
{{- $c.mqttCredentials.secretName }}
{{- else if .ctx.Values.mosquitto.enabled }}
{{- printf "%s-%s-mqtt" (include "iot-cloud.fullname" .ctx) .component }}
{{- end }}
{{- end }}

{{/* Secret with the CA (key ca.crt) the clients verify the broker with: the bundled Mosquitto's
server certificate Secret, or `mqtt.caSecretName` for an external broker (empty: none). */}}
{{- define "iot-cloud.mqttCASecret" -}}
{{- if .Values.mosquitto.enabled }}
{{- include "iot-cloud.mosquittoTlsSecret" . }}
{{- else }}
{{- .Values.mqtt.caSecretName }}
{{- end }}
{{- end }}

{{/* MQTT settings of a client pod (bridge, simulator): (dict "ctx" $ "component" "bridge").
`iot-cloud.mqttClientEnv`, `...VolumeMounts` and `...Volumes` go together. The broker's CA and
the password are mounted files; the username comes from the same Secret. */}}
{{- define "iot-cloud.mqttClientEnv" -}}
- name: IOT_MQTT_URL
  value: {{ include "iot-cloud.mqttUrl" .ctx | quote }}
- name: IOT_MQTT_TOPIC_ROOT
  value: {{ .ctx.Values.mqttTopicRoot | quote }}
{{- if include "iot-cloud.mqttCASecret" .ctx }}
- name: IOT_MQTT_CA_FILE
  value: /etc/mqtt-ca/ca.crt
{{- end }}
{{- with include "iot-cloud.mqttCredentialsSecret" . }}
- name: IOT_MQTT_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: username
- name: IOT_MQTT_PASSWORD_FILE
  value: /etc/mqtt-credentials/password
{{- end }}
{{- end }}

{{- define "iot-cloud.mqttClientVolumeMounts" -}}
{{- if include "iot-cloud.mqttCASecret" .ctx }}
- name: mqtt-ca
  mountPath: /etc/mqtt-ca
  readOnly: true
{{- end }}
{{- if include "iot-cloud.mqttCredentialsSecret" . }}
- name: mqtt-credentials
  mountPath: /etc/mqtt-credentials
  readOnly: true
{{- end }}
{{- end }}

{{- define "iot-cloud.mqttClientVolumes" -}}
{{- with include "iot-cloud.mqttCASecret" .ctx }}
# Only the CA certificate of the broker's TLS Secret (never its key).
- name: mqtt-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0444
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- with include "iot-cloud.mqttCredentialsSecret" . }}
- name: mqtt-credentials
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - {key: password, path: password}
{{- end }}
{{- end }}

{{/* Environment shared by every IoT Cloud process. */}}
{{- define "iot-cloud.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: IOT_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: IOT_TOPIC_PREFIX
  value: {{ .Values.topicPrefix | quote }}
{{- end }}

{{/* Pod-level fields shared by every pod: (dict "ctx" $ "c" .Values.bridge). */}}
{{- define "iot-cloud.podScheduling" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod security context, with an optional fixed user: (dict "ctx" $ "runAsUser" 101). */}}
{{- define "iot-cloud.podSecurityContext" -}}
{{- $sc := deepCopy .ctx.Values.podSecurityContext }}
{{- if .runAsUser }}
{{- $_ := set $sc "runAsUser" (int .runAsUser) }}
{{- $_ := set $sc "runAsGroup" (int .runAsUser) }}
{{- $_ := set $sc "fsGroup" (int .runAsUser) }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/* HTTP probes on a named port. */}}
{{- define "iot-cloud.probes" -}}
startupProbe:
  httpGet: {path: /livez, port: {{ . }}}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /livez, port: {{ . }}}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ . }}}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{/* Annotations for Prometheus servers that scrape by annotation (no Prometheus Operator). */}}
{{- define "iot-cloud.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* A NetworkPolicy rule's `from:` list, or nothing (= anyone) when the list is empty. */}}
{{- define "iot-cloud.np.peers" -}}
{{- if . }}
from:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
