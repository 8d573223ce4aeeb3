//! Dev-only test kit: the in-process Kubernetes API server that unmodified kube-rs clients talk
//! to (no kube-apiserver can be installed on these machines), fixtures and object builders.
//! Filled by the operator issue (issue 6).
