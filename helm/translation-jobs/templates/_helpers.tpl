{{/*
Chart name, truncated to the 63 characters a label value may have.
*/}}
{{- define "translation-jobs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, with the chart name appended
unless the release name already contains it.
*/}}
{{- define "translation-jobs.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
helm.sh/chart label value.
*/}}
{{- define "translation-jobs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The image tag (also the app.kubernetes.io/version label).
*/}}
{{- define "translation-jobs.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the server pods. Include with (dict "ctx" $ "component" "server").
*/}}
{{- define "translation-jobs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "translation-jobs.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Standard labels. Include with (dict "ctx" $ "component" "server").
*/}}
{{- define "translation-jobs.labels" -}}
helm.sh/chart: {{ include "translation-jobs.chart" .ctx }}
{{ include "translation-jobs.selectorLabels" . }}
app.kubernetes.io/version: {{ include "translation-jobs.version" .ctx | quote }}
app.kubernetes.io/part-of: {{ .ctx.Values.partOf }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/*
Labels every pod of the release has, whatever its component (NetworkPolicy selector).
*/}}
{{- define "translation-jobs.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "translation-jobs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "translation-jobs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "translation-jobs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "translation-jobs.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the server loads: existingSecret, or the chart-made one.
Fails the render when neither gives DATABASE_URL, or when both are set.
*/}}
{{- define "translation-jobs.secretName" -}}
{{- $s := .Values.secret }}
{{- if and .Values.existingSecret (or $s.databaseUrl $s.redisUrl $s.authJwtSecret $s.authJwtPublicKey) }}
{{- fail "translation-jobs: set either existingSecret or the secret.* values, not both (secret.* would be ignored)" }}
{{- else if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secret.databaseUrl }}
{{- include "translation-jobs.fullname" . }}
{{- else }}
{{- fail "translation-jobs: DATABASE_URL is required: set existingSecret (a Secret with the key DATABASE_URL) or secret.databaseUrl" }}
{{- end }}
{{- end }}

{{/*
Whether the chart makes the Secret ("true" or "").
*/}}
{{- define "translation-jobs.createSecret" -}}
{{- if and (not .Values.existingSecret) .Values.secret.databaseUrl }}true{{ end }}
{{- end }}

{{/*
Chart-made Secret data: only the keys that have a value.
*/}}
{{- define "translation-jobs.secretData" -}}
DATABASE_URL: {{ .Values.secret.databaseUrl | b64enc | quote }}
{{- with .Values.secret.redisUrl }}
REDIS_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secret.authJwtSecret }}
AUTH_JWT_SECRET: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secret.authJwtPublicKey }}
AUTH_JWT_PUBLIC_KEY: {{ . | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
AUTH_MODE after checking it has what it needs: jwt needs a key source, none must not
have a key in secret.* (the service would refuse the contradiction at start-up).
*/}}
{{- define "translation-jobs.authMode" -}}
{{- $s := .Values.secret }}
{{- $chartKey := or $s.authJwtSecret $s.authJwtPublicKey }}
{{- $envKey := false }}
{{- range .Values.extraEnv }}
{{- if has .name (list "AUTH_JWT_SECRET" "AUTH_JWT_PUBLIC_KEY") }}{{ $envKey = true }}{{ end }}
{{- end }}
{{- if eq .Values.auth.mode "none" }}
{{- if $chartKey }}
{{- fail "translation-jobs: auth.mode is none but secret.authJwtSecret or secret.authJwtPublicKey is set: drop the key to run open, or set auth.mode: jwt" }}
{{- end }}
{{- print "none" }}
{{- else if or $chartKey .Values.existingSecret $envKey }}
{{- print "jwt" }}
{{- else }}
{{- fail "translation-jobs: auth.mode is jwt (the default) but no key source is set: set secret.authJwtSecret (HS256, at least 32 bytes) or secret.authJwtPublicKey (RS256/ES256), or existingSecret holding AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY; or set auth.mode: none to run the service open, deliberately" }}
{{- end }}
{{- end }}

{{- define "translation-jobs.tlsMountPath" -}}/etc/translation-jobs/tls{{- end }}
{{- define "translation-jobs.clientCaMountPath" -}}/etc/translation-jobs/client-ca{{- end }}

{{/*
The plain settings, as KEY: "value" lines: config (empty values left out) plus the
derived ones. Used by the ConfigMap and, inline, by the migration Job.
*/}}
{{- define "translation-jobs.configData" -}}
{{- range $key, $value := .Values.config }}
{{- if ne (toString $value) "" }}
{{ $key }}: {{ toString $value | quote }}
{{- end }}
{{- end }}
AUTH_MODE: {{ include "translation-jobs.authMode" . | quote }}
GRPC_ADDR: {{ printf "%s:%d" .Values.listenAddress (int .Values.ports.grpc) | quote }}
HTTP_ADDR: {{ printf "%s:%d" .Values.listenAddress (int .Values.ports.http) | quote }}
SHUTDOWN_TIMEOUT: {{ printf "%ds" (int .Values.shutdownTimeoutSeconds) | quote }}
{{- if .Values.tls.enabled }}
MANAGEMENT_ADDR: {{ printf "%s:%d" .Values.listenAddress (int .Values.ports.management) | quote }}
GRPC_TLS_CERT: {{ printf "%s/tls.crt" (include "translation-jobs.tlsMountPath" .) | quote }}
GRPC_TLS_KEY: {{ printf "%s/tls.key" (include "translation-jobs.tlsMountPath" .) | quote }}
{{- if .Values.tls.clientCaSecretName }}
GRPC_TLS_CLIENT_CA: {{ printf "%s/%s" (include "translation-jobs.clientCaMountPath" .) .Values.tls.clientCaKey | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + shutdown timeout + margin.
*/}}
{{- define "translation-jobs.terminationGracePeriodSeconds" -}}
{{- $preStop := 0 }}
{{- if .Values.preStop.enabled }}{{ $preStop = int .Values.preStop.sleepSeconds }}{{ end }}
{{- add $preStop (int .Values.shutdownTimeoutSeconds) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
Probe handlers. "liveness" or "readiness" as the argument's .check.
*/}}
{{- define "translation-jobs.probeHandler" -}}
{{- $v := .ctx.Values }}
{{- if or $v.tls.enabled (eq $v.probes.type "http") }}
httpGet:
  path: {{ ternary "/readyz" "/healthz" (eq .check "readiness") }}
  port: {{ ternary "management" "http" $v.tls.enabled }}
{{- else }}
grpc:
  port: {{ $v.ports.grpc }}
  service: {{ ternary $v.probes.grpc.readinessService $v.probes.grpc.livenessService (eq .check "readiness") | quote }}
{{- end }}
{{- end }}
