// Command kube-controller-manager is the upstream Kubernetes kube-controller-manager (k8s.io/kubernetes v1.36.3),
// built from Go modules so the Coral e2e tests can run a real control plane
// on loopback without container images or downloaded release binaries.
// It mirrors k8s.io/kubernetes/cmd/kube-controller-manager/kube-controller-manager.go; see ../../README.md.
package main

import (
	"os"
	_ "time/tzdata" // CronJob time zones, as upstream

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
