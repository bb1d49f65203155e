// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3 v3.6.8,
// the version Kubernetes v1.36.3 pins), built from Go modules so the Coral e2e
// tests can run kube-apiserver's storage without downloaded release binaries.
// It mirrors go.etcd.io/etcd/server/v3/main.go; see ../../README.md.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
