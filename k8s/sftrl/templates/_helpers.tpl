{{/*
Names and labels.
*/}}
{{- define "sftrl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, at most 40 characters: KubeRay derives longer names (head services, the clusters of
RayJobs and RayServices) from it.
*/}}
{{- define "sftrl.fullname" -}}
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

{{- define "sftrl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sftrl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sftrl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sftrl.labels" -}}
helm.sh/chart: {{ include "sftrl.chart" . }}
{{ include "sftrl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sftrl
{{- end }}

{{/*
Image of a Ray pod. Call with (dict "ctx" $ "flavor" "cpu"|"cuda").
*/}}
{{- define "sftrl.image" -}}
{{- $img := .ctx.Values.image }}
{{- printf "%s:%s-%s" $img.repository (default .ctx.Chart.AppVersion $img.tag) .flavor }}
{{- end }}

{{/*
Redis URL: the chart's StatefulSet or redis.externalUrl.
*/}}
{{- define "sftrl.redisUrl" -}}
{{- if and .Values.redis.enabled (or .Values.redis.externalUrl .Values.redis.externalUrlSecret.name) }}
{{- fail "redis.externalUrl is set: also set redis.enabled=false (the chart would run an unused Redis)" }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/%d" (include "sftrl.fullname" .) (int .Values.redis.database) }}
{{- else if .Values.redis.externalUrl }}
{{- .Values.redis.externalUrl }}
{{- else }}
{{- fail "sftrl needs Redis: set redis.enabled=true or redis.externalUrl" }}
{{- end }}
{{- end }}

{{/*
The Secret holding the API token, and its key. Rendering fails when the endpoint is enabled and
neither api.token nor api.existingSecret is given: there is no default token.
*/}}
{{- define "sftrl.apiSecretName" -}}
{{- if .Values.api.existingSecret }}
{{- .Values.api.existingSecret }}
{{- else }}
{{- $_ := required "the evaluation endpoint needs a bearer token: set api.token (e.g. --set api.token=$(openssl rand -hex 32)) or api.existingSecret (a Secret you created), or serve.enabled=false" .Values.api.token }}
{{- printf "%s-api-token" (include "sftrl.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the chart's Redis password.
*/}}
{{- define "sftrl.redisSecretName" -}}
{{- default (printf "%s-redis" (include "sftrl.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{/*
Name of the shared checkpoint claim.
*/}}
{{- define "sftrl.dataClaimName" -}}
{{- default (printf "%s-data" (include "sftrl.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
The training config of the RayJob, rendered to YAML text ("" when job.config is empty).
*/}}
{{- define "sftrl.jobConfigText" -}}
{{- $c := .Values.job.config }}
{{- if kindIs "string" $c }}
{{- $c }}
{{- else if $c }}
{{- toYaml $c }}
{{- end }}
{{- end }}

{{/*
The RayJob entrypoint: sftrl train --config FILE --resume auto --restart 'key=value' ... (overrides
quoted for the shell; --resume auto so that a retried job continues its run, --restart so that one
killed before its first checkpoint starts over with its old folder kept aside), after `sftrl models prepare NAME`
for each of job.prepareModels (a no-op once prepared).
*/}}
{{- define "sftrl.jobEntrypoint" -}}
{{- $config := "" }}
{{- if and (include "sftrl.jobConfigText" .) .Values.job.configPath }}
{{- fail "set job.config or job.configPath, not both" }}
{{- else if include "sftrl.jobConfigText" . }}
{{- $config = "/etc/sftrl/job/train.yaml" }}
{{- else if .Values.job.configPath }}
{{- $config = .Values.job.configPath }}
{{- else }}
{{- fail "job.enabled needs a training config: job.config (YAML text or a mapping) or job.configPath (a file in the image)" }}
{{- end }}
{{- $steps := list }}
{{- range .Values.job.prepareModels }}
{{- $steps = append $steps (printf "sftrl models prepare %s" (squote .)) }}
{{- end }}
{{- $args := list "sftrl" "train" "--config" (squote $config) "--resume" "auto" "--restart" }}
{{- range .Values.job.overrides }}
{{- $args = append $args (printf "'%s'" (replace "'" "'\\''" .)) }}
{{- end }}
{{- $steps = append $steps (join " " $args) }}
{{- join " && " $steps }}
{{- end }}

{{/*
Environment of every sftrl container. Call with (dict "ctx" $ "token" bool).
*/}}
{{- define "sftrl.env" -}}
{{- $ctx := .ctx -}}
- name: SFTRL_HOME
  value: /data
{{- if $ctx.Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sftrl.redisSecretName" $ctx }}
      key: {{ $ctx.Values.redis.auth.secretKey }}
- name: REDIS_URL
  value: {{ include "sftrl.redisUrl" $ctx | quote }}
{{- else if $ctx.Values.redis.externalUrlSecret.name }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.redis.externalUrlSecret.name }}
      key: {{ required "redis.externalUrlSecret needs a key" $ctx.Values.redis.externalUrlSecret.key }}
{{- else }}
- name: REDIS_URL
  value: {{ include "sftrl.redisUrl" $ctx | quote }}
{{- end }}
{{- with $ctx.Values.modelsDir }}
- name: SFTRL_MODELS_DIR
  value: {{ . | quote }}
{{- end }}
{{- if .token }}
- name: SFTRL_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sftrl.apiSecretName" $ctx }}
      key: {{ $ctx.Values.api.secretKey }}
{{- /* the token and body-size gate in front of Serve's HTTP proxy too (it reads SFTRL_API_TOKEN) */}}
- name: RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
  value: deploy.evaluate.serve.guard:proxy_middlewares
- name: SFTRL_PROXY_BODY_LIMIT
  value: {{ $ctx.Values.serve.appArgs.max_body_bytes | default 65536 | int | quote }}
{{- end }}
- name: RAY_JOB_STOP_WAIT_TIME_S
  value: {{ $ctx.Values.stopGraceSeconds | int | quote }}
{{- with $ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Validates a worker group's replica bounds. Call with (dict "name" "..." "group" $group).
*/}}
{{- define "sftrl.checkReplicas" -}}
{{- $g := .group }}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "%s: need minReplicas <= replicas <= maxReplicas (got %d, %d, %d)" .name (int $g.minReplicas) (int $g.replicas) (int $g.maxReplicas)) }}
{{- end }}
{{- end }}

{{/*
Pod template of a Ray head or worker. Call with (dict "ctx" $ "component" "training"|"job"|"serve"
"node" "head"|"worker" "group" <head or worker-group values> "flavor" "cpu"|"cuda" "gpus" N
"token" bool "jobConfig" bool).
*/}}
{{- define "sftrl.rayPodTemplate" -}}
{{- $ctx := .ctx }}
{{- $g := .group }}
{{- $v := $ctx.Values -}}
metadata:
  labels:
    {{- include "sftrl.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  # only the head of an autoscaling cluster talks to the Kubernetes API (KubeRay's autoscaler sidecar)
  automountServiceAccountToken: {{ and (eq .node "head") (default false .autoscaling) }}
  # a stopped run finishes its step and writes its final checkpoint before SIGKILL
  terminationGracePeriodSeconds: {{ int $v.stopGraceSeconds }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ printf "ray-%s" .node }}
      image: {{ include "sftrl.image" (dict "ctx" $ctx "flavor" .flavor) }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      {{- if eq .node "head" }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: serve, containerPort: 8000}
        - {name: metrics, containerPort: 8080}
      {{- else }}
      ports:
        - {name: serve, containerPort: 8000}
        - {name: metrics, containerPort: 8080}
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sh", "-c", "ray stop"]
      {{- end }}
      env:
        {{- include "sftrl.env" (dict "ctx" $ctx "token" .token) | nindent 8 }}
      resources:
        {{- $res := deepCopy (default dict $g.resources) }}
        {{- if gt (int .gpus) 0 }}
        {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.limits)) }}
        {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.requests)) }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      {{- with $v.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: dshm, mountPath: /dev/shm}
        {{- if .jobConfig }}
        - {name: job-config, mountPath: /etc/sftrl/job, readOnly: true}
        {{- end }}
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: {{ include "sftrl.dataClaimName" $ctx }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $g.shmSize }}
    {{- if .jobConfig }}
    - name: job-config
      configMap:
        name: {{ include "sftrl.fullname" $ctx }}-job-config
    {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Refuses a KubeRay operator whose CRDs lack authOptions (before 1.5.1): the API server would prune
the field without a word and the Ray clusters would start without KubeRay's token authentication.
*/}}
{{- define "sftrl.checkKubeRay" -}}
{{- $version := .Values.kuberay.version }}
{{- if not (semverCompare ">=1.5.1-0" $version) }}
{{- fail (printf "kuberay.version is %s: KubeRay before 1.5.1 does not know authOptions, so the API server would drop it from every RayCluster, RayJob and RayService and Ray would run without KubeRay's token authentication (rayAuthMode). Upgrade the KubeRay operator (the chart is tested with 1.7.0) and set kuberay.version to its version." $version) }}
{{- end }}
{{- end }}

{{/*
Body of a RayCluster spec (also a RayJob's rayClusterSpec and a RayService's rayClusterConfig).
Call with (dict "ctx" $ "spec" <cluster or serve values> "path" "cluster"|"serve" (for messages)
"component" "..." "token" bool "jobConfig" bool).
*/}}
{{- define "sftrl.rayClusterSpec" -}}
{{- $ctx := .ctx }}
{{- $s := .spec }}
{{- $flavor := $ctx.Values.image.flavor }}
{{- include "sftrl.checkKubeRay" $ctx -}}
rayVersion: {{ $ctx.Values.rayVersion | quote }}
authOptions:
  mode: {{ $ctx.Values.rayAuthMode }}
{{- if $s.autoscaling.enabled }}
enableInTreeAutoscaling: true
autoscalerOptions:
  upscalingMode: {{ $s.autoscaling.upscalingMode }}
  idleTimeoutSeconds: {{ int $s.autoscaling.idleTimeoutSeconds }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  {{- with $s.autoscaling.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ctx.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
headGroupSpec:
  serviceType: {{ $s.head.serviceType }}
  rayStartParams:
    {{- toYaml (merge (dict "dashboard-host" "0.0.0.0") $s.head.rayStartParams) | nindent 4 }}
  template:
    {{- include "sftrl.rayPodTemplate" (dict "ctx" $ctx "component" .component "node" "head" "group" $s.head "flavor" $flavor "gpus" 0 "token" .token "jobConfig" .jobConfig "autoscaling" $s.autoscaling.enabled) | nindent 4 }}
{{- $groups := list }}
{{- range $key := list "cpu" "gpu" }}
{{- $g := index $s.workerGroups $key }}
{{- if $g.enabled }}
{{- $groups = append $groups (dict "key" $key "group" $g) }}
{{- end }}
{{- end }}
{{- if $groups }}
workerGroupSpecs:
{{- range $groups }}
{{- $g := .group }}
{{- $gpus := 0 }}
{{- $gflavor := $flavor }}
{{- if eq .key "gpu" }}
{{- $gpus = int $g.gpusPerWorker }}
{{- $gflavor = "cuda" }}
{{- end }}
{{- include "sftrl.checkReplicas" (dict "name" (printf "%s.workerGroups.%s" $.path .key) "group" $g) }}
  - groupName: {{ .key }}-workers
    replicas: {{ int $g.replicas }}
    minReplicas: {{ int $g.minReplicas }}
    maxReplicas: {{ int $g.maxReplicas }}
    {{- with $g.rayStartParams }}
    rayStartParams:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    template:
      {{- include "sftrl.rayPodTemplate" (dict "ctx" $ctx "component" $.component "node" "worker" "group" $g "flavor" $gflavor "gpus" $gpus "token" $.token "jobConfig" false) | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}
