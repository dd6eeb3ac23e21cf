"""A real local Kubernetes control plane (etcd, kube-apiserver, controller-manager,
scheduler) with KWOK-simulated GPU nodes, built from Go modules and cached by version."""
