{{/* The one image with every Slipway binary. */}}
{{- define "slipway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of a component's objects; selectors use app.kubernetes.io/name alone. */}}
{{- define "slipway.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: slipway
{{- end }}

{{- define "slipway.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
