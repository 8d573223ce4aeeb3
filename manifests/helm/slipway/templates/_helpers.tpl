{{/* A component's image: (list $ "operator"|"agent"|"server"); pinned by digest when one is set. */}}
{{- define "slipway.image" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $digest := index $root.Values.image (printf "%sDigest" $c) | default "" -}}
{{- if and $digest (not (regexMatch "^sha256:[0-9a-f]{64}$" $digest)) -}}
{{- fail (printf "image.%sDigest %q: expected sha256:<64 hex digits>" $c $digest) -}}
{{- end -}}
{{ $root.Values.image.registry }}/slipway-{{ $c }}{{ if $digest }}@{{ $digest }}{{ else }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}{{ end }}
{{- end }}

{{/* Labels of a component's objects; selectors use app.kubernetes.io/name alone. */}}
{{- define "slipway.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: slipway
{{- end }}

{{/* KUBERNETES_SERVICE_HOST/PORT when .Values.apiServer.host is set (list items, unindented). */}}
{{- define "slipway.apiServerEnv" -}}
{{- with .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.apiServer.port | quote }}
{{- end }}
{{- end }}

{{- define "slipway.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
