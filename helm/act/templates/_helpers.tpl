{{/*
Names, labels and the pieces every workload shares. Component templates are called with
(dict "root" $ "component" "<name>").
*/}}

{{- define "act.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "act.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component> */}}
{{- define "act.componentName" -}}
{{- printf "%s-%s" (include "act.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "act.selectorLabels" -}}
app.kubernetes.io/name: {{ include "act.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "act.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "act.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: act
{{- end -}}

{{- define "act.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "act.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key holding the review store's URL. */}}
{{- define "act.databaseSecretName" -}}
{{- if .Values.database.url -}}
{{- printf "%s-database" (include "act.fullname" .) -}}
{{- else -}}
{{- .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "act.databaseUrlEnv" -}}
{{- $root := .root -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "act.databaseSecretName" $root }}
      key: {{ $root.Values.database.secretKey }}
{{- end -}}

{{/* Pod-level fields shared by the ACT workloads (not the Ray pods). */}}
{{- define "act.podSpecCommon" -}}
serviceAccountName: {{ include "act.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* nodeSelector, tolerations and affinity of a component's values (empty when none). */}}
{{- define "act.placement" -}}
{{- $placement := dict -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" -}}
{{- with index $ $key -}}
{{- $_ := set $placement $key . -}}
{{- end -}}
{{- end -}}
{{- if $placement -}}
{{- toYaml $placement -}}
{{- end -}}
{{- end -}}

{{/* The connection and sizing of the Kafka bus (act.bus.settings), for every Kafka client. */}}
{{- define "act.kafkaEnv" -}}
- name: ACT_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: ACT_KAFKA_CLIENT_ID
  value: {{ .Values.kafka.clientId | quote }}
- name: ACT_TOPIC_PARTITIONS
  value: {{ .Values.kafka.topics.partitions | int64 | quote }}
- name: ACT_TOPIC_REPLICATION
  value: {{ .Values.kafka.topics.replication | int64 | quote }}
- name: ACT_MAX_PAYLOAD_BYTES
  value: {{ .Values.kafka.maxPayloadBytes | int64 | quote }}
{{- end -}}

{{/*
Writable scratch space: the root filesystem is read-only, so HOME (caches of torch, vLLM,
Triton, matplotlib) and HF_HOME (Hugging Face's cache, remote code of trust_remote_code models)
point at an emptyDir on /tmp.
*/}}
{{- define "act.scratchEnv" -}}
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /tmp/huggingface
{{- end -}}

{{- define "act.labelSchemasEnv" -}}
{{- if .Values.labelSchemas -}}
- name: ACT_SCHEMAS_DIR
  value: /etc/act/schemas
{{- end -}}
{{- end -}}

{{/*
Volumes of the ACT services: scratch space, and the label schemas for the services that read
ACT_SCHEMAS_DIR. Called with (dict "root" $ "schemas" <bool>).
*/}}
{{- define "act.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and .schemas .root.Values.labelSchemas }}
- name: label-schemas
  mountPath: /etc/act/schemas
  readOnly: true
{{- end }}
{{- end -}}

{{- define "act.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if and .schemas .root.Values.labelSchemas }}
- name: label-schemas
  configMap:
    name: {{ include "act.fullname" .root }}-label-schemas
{{- end }}
{{- end -}}

{{- define "act.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* A map as "KEY=VALUE KEY=VALUE" (keys sorted): the environment form of a repeatable option. */}}
{{- define "act.keyValuePairs" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%v" $key $value) -}}
{{- end -}}
{{- join " " $pairs -}}
{{- end -}}

{{/*
The pod template of a Ray head or worker of the training job:
(dict "root" $ "ctx" <component context> "pod" (dict "role" "container" "resources" "placement")).
*/}}
{{- define "act.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $trainer := $root.Values.trainer -}}
metadata:
  labels:
    {{- include "act.selectorLabels" .ctx | nindent 4 }}
    act.dev/ray-role: {{ .pod.role }}
spec:
  serviceAccountName: {{ include "act.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # The Ray image's own user `ray`.
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 100
    fsGroup: 100
    seccompProfile:
      type: RuntimeDefault
  {{- with include "act.placement" .pod.placement }}
  {{- . | nindent 2 }}
  {{- end }}
  containers:
    - name: {{ .pod.container }}
      image: {{ $root.Values.images.trainer | quote }}
      imagePullPolicy: {{ $root.Values.images.pullPolicy }}
      # The review store, for `actctl export` (ACT_REVIEW_DATABASE_URL) and the trainer.
      env:
        {{- include "act.databaseUrlEnv" (dict "root" $root "name" "ACT_REVIEW_DATABASE_URL") | nindent 8 }}
        {{- include "act.databaseUrlEnv" (dict "root" $root "name" "ACT_DATABASE_URL") | nindent 8 }}
      {{- if eq .pod.role "head" }}
      ports:
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
      {{- end }}
      resources:
        {{- toYaml .pod.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: false
        capabilities:
          drop: ["ALL"]
      volumeMounts:
        - name: data
          mountPath: /data
        - name: dshm
          mountPath: /dev/shm
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: {{ $trainer.dataVolume.claimName }}
    # Ray's object store lives in shared memory.
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $trainer.shmSize }}
{{- end -}}
