# Versions of every external part of the local test environment. Sourced by the testenv scripts;
# each cached build lives under $IOT_CACHE keyed by these, so bumping one rebuilds only that part.
K8S_VERSION=v1.35.4
K8S_STAGING_VERSION=v0.35.4
ETCD_VERSION=v3.6.13
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
PROMETHEUS_MODULE_VERSION=v0.316.0 # Prometheus v3.16.0
KAFKA_VERSION=4.1.1
KAFKA_SCALA=2.13
# Oldest Mosquitto that honours an MQTT 5 client's Receive Maximum (install-mosquitto.sh).
MOSQUITTO_MIN_VERSION=2.0.13
# The real node (up.sh node): cluster DNS and the NetworkPolicy enforcer; the kubelet and
# kube-proxy come from the Kubernetes module at K8S_VERSION.
COREDNS_VERSION=v1.14.7
KUBE_ROUTER_VERSION=v2.1.0

IOT_CACHE=${IOT_CACHE:-$HOME/.cache/iot-cloud}
