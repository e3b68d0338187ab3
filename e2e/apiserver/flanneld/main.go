// flanneld for the policyc lab: flannel's own daemon loop (github.com/flannel-io/flannel's
// main.go), cut down to what a VXLAN node with the Kubernetes subnet manager runs.
//
// Why not build github.com/flannel-io/flannel itself: its main package links every backend,
// and the tencentvpc backend needs github.com/tencentcloud/tencentcloud-sdk-go, which the Go
// module proxy used here refuses. This main imports only the kube subnet manager
// (pkg/subnet/kube) and the vxlan backend (pkg/backend/vxlan), so none of the cloud
// backends' modules are needed to build it.
//
// Left out, compared with flannel's main.go: the etcd subnet manager, the other backends, the
// iptables/nftables traffic manager (masquerade and FORWARD-accept rules: the lab's nodes
// forward by default and have no outside world, and policyc's tables must be alone in a
// node's ruleset), the blackhole route, the br_netfilter check (it guards the traffic
// manager's iptables rules) and the healthz server. The flags kept have flannel's names and
// defaults, and FLANNELD_* environment variables set them as in flannel.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/pkg/flagutil"
	"github.com/flannel-io/flannel/pkg/backend"
	_ "github.com/flannel-io/flannel/pkg/backend/vxlan"
	"github.com/flannel-io/flannel/pkg/ipmatch"
	"github.com/flannel-io/flannel/pkg/subnet"
	"github.com/flannel-io/flannel/pkg/subnet/kube"
	log "k8s.io/klog/v2"
)

type flagSlice []string

func (t *flagSlice) String() string     { return fmt.Sprintf("%v", *t) }
func (t *flagSlice) Set(v string) error { *t = append(*t, v); return nil }

var opts struct {
	kubeSubnetMgr             bool
	kubeApiUrl                string
	kubeAnnotationPrefix      string
	kubeConfigFile            string
	iface                     flagSlice
	ifaceRegex                flagSlice
	subnetFile                string
	publicIP                  string
	publicIPv6                string
	netConfPath               string
	setNodeNetworkUnavailable bool
	version                   bool
}

var flannelFlags = flag.NewFlagSet("flannel", flag.ExitOnError)

func init() {
	f := flannelFlags
	f.BoolVar(&opts.kubeSubnetMgr, "kube-subnet-mgr", false, "contact the Kubernetes API for subnet assignment (the only subnet manager here; required)")
	f.StringVar(&opts.kubeApiUrl, "kube-api-url", "", "Kubernetes API server URL")
	f.StringVar(&opts.kubeAnnotationPrefix, "kube-annotation-prefix", "flannel.alpha.coreos.com", "Kubernetes annotation prefix")
	f.StringVar(&opts.kubeConfigFile, "kubeconfig-file", "", "kubeconfig file location")
	f.Var(&opts.iface, "iface", "interface to use (IP or name) for inter-host communication; may repeat")
	f.Var(&opts.ifaceRegex, "iface-regex", "regex matching the interface to use; may repeat")
	f.StringVar(&opts.subnetFile, "subnet-file", "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ...) will be written to")
	f.StringVar(&opts.publicIP, "public-ip", "", "IP accessible by other nodes for inter-host communication")
	f.StringVar(&opts.publicIPv6, "public-ipv6", "", "IPv6 accessible by other nodes for inter-host communication")
	f.StringVar(&opts.netConfPath, "net-config-path", "/etc/kube-flannel/net-conf.json", "path to the network configuration file")
	f.BoolVar(&opts.setNodeNetworkUnavailable, "set-node-network-unavailable", true, "set NodeNetworkUnavailable after ready")
	f.BoolVar(&opts.version, "version", false, "print version and exit")
	log.InitFlags(nil)
	_ = flag.Set("logtostderr", "true")
	for _, name := range []string{"v", "vmodule"} {
		f.Var(flag.Lookup(name).Value, name, flag.Lookup(name).Usage)
	}
	if err := f.Parse(os.Args[1:]); err != nil {
		log.Error("Can't parse flannel flags: ", err)
		os.Exit(1)
	}
}

// version is set by build.sh to the flannel module's version.
var version = "unknown"

func main() {
	if opts.version {
		fmt.Fprintln(os.Stderr, version)
		os.Exit(0)
	}
	if err := flagutil.SetFlagsFromEnv(flannelFlags, "FLANNELD"); err != nil {
		log.Error("Failed to set flags from FLANNELD_* env: ", err)
	}
	if !opts.kubeSubnetMgr {
		log.Error("this flanneld has only the Kubernetes subnet manager: pass --kube-subnet-mgr")
		os.Exit(2)
	}
	log.Infof("flanneld %s (kube subnet manager, vxlan backend only), flags: %+v", version, opts)

	ctx, cancel := context.WithCancel(context.Background())
	sm, err := kube.NewSubnetManager(ctx, opts.kubeApiUrl, opts.kubeConfigFile,
		opts.kubeAnnotationPrefix, opts.netConfPath, opts.setNodeNetworkUnavailable)
	if err != nil {
		log.Error("Failed to create SubnetManager: ", err)
		os.Exit(1)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	wg := sync.WaitGroup{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-sigs:
			cancel()
		}
		signal.Stop(sigs)
	}()
	fail := func(format string, args ...interface{}) {
		log.Errorf(format, args...)
		cancel()
		wg.Wait()
		os.Exit(1)
	}

	config, err := getConfig(ctx, sm)
	if err != nil {
		wg.Wait()
		os.Exit(0)
	}
	if config.BackendType != "vxlan" {
		fail("this flanneld has only the vxlan backend, the network config asks for %q", config.BackendType)
	}
	ipStack, err := ipmatch.GetIPFamily(config.EnableIPv4, config.EnableIPv6)
	if err != nil {
		fail("%v", err)
	}

	// Which interface carries the overlay: as flannel's main.go picks it.
	if ip, ip6 := sm.GetStoredPublicIP(ctx); ip != "" || ip6 != "" {
		if ip != "" {
			opts.publicIP = ip
		}
		if ip6 != "" {
			opts.publicIPv6 = ip6
		}
	}
	pub := ipmatch.PublicIPOpts{PublicIP: opts.publicIP, PublicIPv6: opts.publicIPv6}
	var extIface *backend.ExternalInterface
	if len(opts.iface) == 0 && len(opts.ifaceRegex) == 0 {
		ip := opts.publicIP
		if ip == "" {
			ip = opts.publicIPv6
		}
		if extIface, err = ipmatch.LookupExtIface(ip, "", "", ipStack, pub); err != nil {
			fail("Failed to find any valid interface to use: %v", err)
		}
	} else {
		for _, i := range opts.iface {
			if extIface, err = ipmatch.LookupExtIface(i, "", "", ipStack, pub); err != nil {
				log.Infof("Could not find valid interface matching %s: %s", i, err)
			}
			if extIface != nil {
				break
			}
		}
		for _, r := range opts.ifaceRegex {
			if extIface != nil {
				break
			}
			if extIface, err = ipmatch.LookupExtIface("", r, "", ipStack, pub); err != nil {
				log.Infof("Could not find valid interface matching %s: %s", r, err)
			}
		}
		if extIface == nil {
			fail("Failed to find interface to use that matches the interfaces and/or regexes provided")
		}
	}

	bm := backend.NewManager(ctx, sm, extIface)
	be, err := bm.GetBackend(config.BackendType)
	if err != nil {
		fail("Error fetching backend: %s", err)
	}
	bn, err := be.RegisterNetwork(ctx, &wg, config)
	if err != nil {
		fail("Error registering network: %s", err)
	}
	if err := sm.HandleSubnetFile(opts.subnetFile, config, false, bn.Lease().Subnet, bn.Lease().IPv6Subnet, bn.MTU()); err != nil {
		log.Warningf("Failed to write subnet file: %s", err)
	} else {
		log.Infof("Wrote subnet file to %s", opts.subnetFile)
		log.Info("flannel is ready")
	}

	log.Info("Running backend.")
	wg.Add(1)
	go func() {
		bn.Run(ctx)
		wg.Done()
	}()
	if err := sm.CompleteLease(ctx, bn.Lease(), &wg); err != nil {
		log.Errorf("CompleteLease execute error err: %v", err)
		if strings.EqualFold(err.Error(), "interrupted") {
			cancel()
		}
	}
	wg.Wait()
	log.Info("Exiting cleanly...")
	os.Exit(0)
}

// getConfig retries every second until the network config is read (as flannel does).
func getConfig(ctx context.Context, sm subnet.Manager) (*subnet.Config, error) {
	for {
		config, err := sm.GetNetworkConfig(ctx)
		if err != nil {
			log.Errorf("Couldn't fetch network config: %s", err)
		} else if config != nil {
			log.Infof("Found network config - Backend type: %s", config.BackendType)
			return config, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("canceled")
		case <-time.After(time.Second):
		}
	}
}
