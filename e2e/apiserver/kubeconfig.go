package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const clusterName = "kube-lab"

// labInfo is written to DIR/lab.json by `serve` once the apiserver is ready;
// tests may read it instead of parsing the kubeconfig.
type labInfo struct {
	Server      string `json:"server"`      // https://127.0.0.1:PORT
	Kubeconfig  string `json:"kubeconfig"`  // admin (system:masters) kubeconfig
	CAFile      string `json:"caFile"`      // CA of the serving and client certs
	Etcd        string `json:"etcd"`        // http://127.0.0.1:PORT (embedded etcd client URL)
	PID         int    `json:"pid"`         // kube-lab serve process
	K8sVersion  string `json:"k8sVersion"`  // version of the embedded kube-apiserver
	EtcdVersion string `json:"etcdVersion"` // version of the embedded etcd
}

func readLabInfo(dir string) (*labInfo, error) {
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return nil, fmt.Errorf("%w (is `kube-lab serve --dir %s` running?)", err, dir)
	}
	var li labInfo
	return &li, json.Unmarshal(b, &li)
}

// writeKubeconfig writes a kubeconfig that embeds the CA and the client
// cert/key, so it stays valid wherever it is copied.
func writeKubeconfig(path, server string, caPEM []byte, user string, kp *keyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{
		Server:                   server,
		CertificateAuthorityData: caPEM,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: kp.certPEM,
		ClientKeyData:         kp.keyPEM,
	}
	cfg.Contexts[user+"@"+clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = user + "@" + clusterName
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeFile(path, b, 0o600)
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// cmdKubeconfig: kube-lab kubeconfig --dir DIR --user NAME [--group G]... [--out PATH]
// Signs a client cert for NAME (groups G...) with the lab CA and writes a
// kubeconfig for it. The user has no permissions until RBAC grants them.
func cmdKubeconfig(args []string) error {
	fs := flag.NewFlagSet("kubeconfig", flag.ContinueOnError)
	dir := fs.String("dir", "", "lab directory of a `kube-lab serve` (required)")
	user := fs.String("user", "", "user name: the client cert's CommonName (required)")
	out := fs.String("out", "", "where to write the kubeconfig (default DIR/kubeconfig-USER)")
	server := fs.String("server", "", "apiserver URL (default: from DIR/lab.json)")
	var groups stringList
	fs.Var(&groups, "group", "group: the client cert's Organization (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *user == "" || fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("--dir and --user are required")
	}
	if *server == "" {
		li, err := readLabInfo(*dir)
		if err != nil {
			return err
		}
		*server = li.Server
	}
	ca, err := loadKeyPair(*dir, caCertFile, caKeyFile)
	if err != nil {
		return fmt.Errorf("lab CA: %w", err)
	}
	kp, err := issueClient(ca, *user, groups)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(*dir, "kubeconfig-"+*user)
	}
	if abs, err := filepath.Abs(*out); err == nil {
		*out = abs
	}
	if err := writeKubeconfig(*out, *server, ca.certPEM, *user, kp); err != nil {
		return err
	}
	fmt.Println(*out)
	return nil
}
