// Package network holds a pod's network: the network namespace that
// outlives the pod's processes, bind-mounted under the state directory as
// containerd does, and the CNI networks added to it (the loopback, then
// the first configuration of the conf dir) and deleted from it.
package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"

	"github.com/containerd/errdefs"
	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	cni100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/flotilla-project/flotilla/pkg/logging"
)

// CNI adds pods to the network its conf dir configures, with the plugins
// of its bin dirs.
type CNI struct {
	confDir  string
	binDirs  []string
	cacheDir string
}

// NewCNI is the pods' network of the first configuration in confDir,
// its plugins found in binDirs and libcni's cache kept in cacheDir.
func NewCNI(confDir string, binDirs []string, cacheDir string) *CNI {
	return &CNI{confDir: confDir, binDirs: binDirs, cacheDir: cacheDir}
}

// NewNetNS creates a network namespace that outlives every process in it:
// a thread unshares its network namespace and bind-mounts it at
// <state>/netns/<name>, as containerd does, so that CNI and runc can
// enter it by path.
func NewNetNS(dir, name string) (string, error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return "", fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine and
		// takes its changed network namespace with it.
		goruntime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount network namespace at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return "", err
	}
	return path, nil
}

// RemoveNetNS unmounts and removes a network namespace; a missing one is
// no error.
func RemoveNetNS(path string) error {
	if path == "" {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// loopbackConf brings up lo in every pod's namespace, as containerd's
// go-cni does before the pod network.
const loopbackConf = `{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}`

// network loads the first network configuration of the conf dir in
// lexical order, as containerd (and the kubelet before it) picks it.
func (n *CNI) network(ctx context.Context) (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(n.confDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("cni config dir %s: %w", n.confDir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		list, err := libcni.NetworkConfFromFile(f)
		if err != nil {
			logging.G(ctx).Warn("skipping unreadable CNI config", "file", f, "error", err)
			continue
		}
		if len(list.Plugins) == 0 {
			continue
		}
		return list, nil
	}
	return nil, fmt.Errorf("no CNI network config in %s: %w", n.confDir, errdefs.ErrFailedPrecondition)
}

func (n *CNI) config() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(n.binDirs, n.cacheDir, nil)
}

func podRuntimeConf(id, netns, ifName string, cfg *runtime.PodSandboxConfig) *libcni.RuntimeConf {
	md := cfg.GetMetadata()
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", md.GetNamespace()},
			{"K8S_POD_NAME", md.GetName()},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", md.GetUid()},
		},
		CapabilityArgs: map[string]any{},
	}
	var ports []map[string]any
	for _, p := range cfg.GetPortMappings() {
		if p.GetHostPort() <= 0 {
			continue
		}
		proto := "tcp"
		switch p.GetProtocol() {
		case runtime.Protocol_UDP:
			proto = "udp"
		case runtime.Protocol_SCTP:
			proto = "sctp"
		}
		ports = append(ports, map[string]any{
			"hostPort": p.GetHostPort(), "containerPort": p.GetContainerPort(),
			"protocol": proto, "hostIP": p.GetHostIp(),
		})
	}
	if len(ports) > 0 {
		rt.CapabilityArgs["portMappings"] = ports
	}
	return rt
}

// Setup runs CNI ADD for the loopback and the pod network and
// returns the pod's addresses, the first one primary.
func (n *CNI) Setup(ctx context.Context, id, netns string, cfg *runtime.PodSandboxConfig) ([]string, error) {
	network, err := n.network(ctx)
	if err != nil {
		return nil, err
	}
	cni := n.config()
	lo, err := libcni.ConfListFromBytes([]byte(loopbackConf))
	if err != nil {
		return nil, err
	}
	if _, err := cni.AddNetworkList(ctx, lo, podRuntimeConf(id, netns, "lo", cfg)); err != nil {
		return nil, fmt.Errorf("cni loopback add: %w", err)
	}
	res, err := cni.AddNetworkList(ctx, network, podRuntimeConf(id, netns, "eth0", cfg))
	if err != nil {
		return nil, fmt.Errorf("cni network %s add: %w", network.Name, err)
	}
	return resultIPs(res)
}

// Teardown runs CNI DEL; plugins treat a DEL of what is gone as
// success, which makes a retry after a failure safe.
func (n *CNI) Teardown(ctx context.Context, id, netns string, cfg *runtime.PodSandboxConfig) error {
	network, err := n.network(ctx)
	if err != nil {
		return err
	}
	cni := n.config()
	if err := cni.DelNetworkList(ctx, network, podRuntimeConf(id, netns, "eth0", cfg)); err != nil {
		return fmt.Errorf("cni network %s del: %w", network.Name, err)
	}
	if lo, err := libcni.ConfListFromBytes([]byte(loopbackConf)); err == nil {
		if err := cni.DelNetworkList(ctx, lo, podRuntimeConf(id, netns, "lo", cfg)); err != nil {
			logging.G(ctx).Debug("cni loopback del", "sandbox", id, "error", err)
		}
	}
	return nil
}

func resultIPs(res cnitypes.Result) ([]string, error) {
	cur, err := cni100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("cni result: %w", err)
	}
	var v4, v6 []string
	for _, ip := range cur.IPs {
		if ip.Address.IP == nil {
			continue
		}
		// Only addresses on the pod's own interface (or unattributed).
		if ip.Interface != nil && *ip.Interface < len(cur.Interfaces) && cur.Interfaces[*ip.Interface].Sandbox == "" {
			continue
		}
		if ip.Address.IP.To4() != nil {
			v4 = append(v4, ip.Address.IP.String())
		} else if !ip.Address.IP.IsLinkLocalUnicast() {
			v6 = append(v6, ip.Address.IP.String())
		}
	}
	// IPv4 first, as containerd's CRI chooses the primary address.
	out := append(v4, v6...)
	if len(out) == 0 {
		return nil, fmt.Errorf("cni result has no pod address: %v", cur.IPs)
	}
	return out, nil
}

// HasConfig reports whether dir holds a network configuration libcni
// would load (.conf, .conflist or .json).
func HasConfig(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if !e.IsDir() {
				return true, nil
			}
		}
	}
	return false, nil
}
