"""Deployment tests: the Docker image, the monitoring stack and the Kubernetes manifests."""
