package migrate

import (
	"fmt"
	"path/filepath"
	"strings"
)

// containerd's plugin tables this reads, by the name containerd gives them.
const (
	criV2        = "io.containerd.grpc.v1.cri"    // version 2: the whole CRI
	criImages    = "io.containerd.cri.v1.images"  // versions 3 and 4
	criRuntime   = "io.containerd.cri.v1.runtime" // versions 3 and 4
	criServer    = "io.containerd.grpc.v1.cri"    // versions 3 and 4: streaming
	overlayfs    = "io.containerd.snapshotter.v1.overlayfs"
	grpcServer   = "io.containerd.server.v1.grpc"    // version 4
	metricServer = "io.containerd.server.v1.metrics" // version 4
	runcV2       = "io.containerd.runc.v2"
)

// cri is the cri service's options table in Flotilla's configuration.
var cri = []string{"services", "cri", "options"}

func criKey(parts ...string) []string { return append(append([]string{}, cri...), parts...) }

func plugin(name string, parts ...string) []string {
	return append([]string{"plugins", name}, parts...)
}

func (c *converter) convert() {
	c.use("version")
	c.daemon()
	if c.version == 2 {
		c.criV2()
	} else {
		c.criV3()
	}
	c.snapshotters()
}

// daemon carries the daemon's own settings: socket owner, logging,
// metrics. Where containerd keeps its data is not carried over: Flotilla
// keeps its own, under its root; `flotilla adopt-containerd` brings the
// images over.
func (c *converter) daemon() {
	for _, k := range []string{"root", "state"} {
		if v, ok := c.str(k); ok && !c.isDefault([]string{k}, v) {
			c.note("%s = %s: not carried over: Flotilla keeps its own %s under [%s] (default /var/lib/flotilla, /run/flotilla); set it to put Flotilla's on the same disk", k, value(v), k, k)
		}
	}
	grpc := []string{"grpc"}
	metrics := []string{"metrics", "address"}
	if c.version == 4 {
		grpc = plugin(grpcServer)
		metrics = plugin(metricServer, "address")
	}
	if v, ok := c.str(append(grpc, "address")...); ok && !c.isDefault(append(grpc, "address"), v) {
		c.note("%s = %s: not carried over: Flotilla's socket is [grpc] address (default /run/flotilla/flotilla.sock); set it there to serve containerd's clients at this path", keyName(append(grpc, "address")), value(v))
	}
	for _, k := range []string{"uid", "gid"} {
		if v, ok := c.get(append(grpc, k)...); ok {
			c.set([]string{"grpc", k}, v, keyName(append(grpc, k)))
		}
	}
	if v, ok := c.str("debug", "level"); ok && v != "" {
		level := map[string]string{"trace": "trace", "debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error", "fatal": "error", "panic": "error"}[v]
		if level == "" {
			c.note("debug.level = %s: not carried over: Flotilla's levels are trace, debug, info, warn and error", value(v))
		} else {
			c.set([]string{"debug", "level"}, level, "debug.level")
		}
	}
	if v, ok := c.str("debug", "format"); ok && v != "" {
		c.set([]string{"debug", "format"}, v, "debug.format")
	}
	if v, ok := c.str(metrics...); ok && v != "" {
		c.set([]string{"metrics", "address"}, v, keyName(metrics))
		c.note("%s = %s: carried over as [metrics] address; Flotilla serves Prometheus' /metrics there (containerd: /v1/metrics)", keyName(metrics), value(v))
	}
	if v, ok := c.get("imports"); ok {
		var files []string
		for _, pattern := range strings_(v) {
			m, _ := filepath.Glob(pattern)
			files = append(files, m...)
		}
		if len(files) > 0 {
			c.note("imports: %s not read: convert each (or their merge with this file) too", strings.Join(files, ", "))
		}
	}
	c.proxyPlugins()
}

// proxyPlugins: a proxy snapshotter is a remote snapshotter to Flotilla,
// named and reached the same way.
func (c *converter) proxyPlugins() {
	v, _ := c.get("proxy_plugins")
	plugins, _ := v.(map[string]any)
	for _, name := range sortedKeys(plugins) {
		p := []string{"proxy_plugins", name}
		typ, _ := c.str(append(p, "type")...)
		addr, _ := c.str(append(p, "address")...)
		if typ != "snapshot" {
			c.note("%s (type %q): not carried over: Flotilla takes remote snapshotters alone from proxy_plugins; its own services are configured under [services]", keyName(p), typ)
			c.use(p...)
			continue
		}
		c.set([]string{"snapshotters", name, "address"}, addr, keyName(append(p, "address")))
		for _, k := range []string{"platform", "platforms"} {
			c.get(append(p, k)...) // a snapshotter on this host is for its platform
		}
	}
}

// criV2 carries version 2's CRI plugin, plugins."io.containerd.grpc.v1.cri".
func (c *converter) criV2() {
	p := func(parts ...string) []string { return plugin(criV2, parts...) }
	c.carry(p("sandbox_image"), criKey("sandbox_image"))
	c.carry(p("max_concurrent_downloads"), criKey("max_concurrent_downloads"))
	c.carry(p("restrict_oom_score_adj"), criKey("restrict_oom_score_adj"))
	c.carry(p("stream_server_address"), criKey("stream_server_address"))
	c.carry(p("stream_server_port"), criKey("stream_server_port"))
	c.criSnapshotter(p("containerd", "snapshotter"))
	c.cni(p("cni"))
	c.registry(p("registry"))
	c.runtimes(p("containerd"))
	c.cdi(p())
	if v, ok := c.get(p("systemd_cgroup")...); ok && v == true {
		c.note("%s = true: not carried over: Flotilla's containers' cgroups are cgroupfs ones (the kubelet's cgroupDriver: cgroupfs)", keyName(p("systemd_cgroup")))
	}
}

// criV3 carries versions 3 and 4's CRI plugins: images, runtime and the
// streaming server.
func (c *converter) criV3() {
	img := func(parts ...string) []string { return plugin(criImages, parts...) }
	rt := func(parts ...string) []string { return plugin(criRuntime, parts...) }
	c.carry(img("pinned_images", "sandbox"), criKey("sandbox_image"))
	c.carry(img("max_concurrent_downloads"), criKey("max_concurrent_downloads"))
	c.criSnapshotter(img("snapshotter"))
	c.registry(img("registry"))
	c.carry(rt("restrict_oom_score_adj"), criKey("restrict_oom_score_adj"))
	c.cni(rt("cni"))
	c.runtimes(rt("containerd"))
	c.cdi(rt())
	c.carry(plugin(criServer, "stream_server_address"), criKey("stream_server_address"))
	c.carry(plugin(criServer, "stream_server_port"), criKey("stream_server_port"))
}

// carry sets Flotilla's setting to containerd's value at from, if any.
func (c *converter) carry(from, to []string) {
	if v, ok := c.get(from...); ok {
		c.set(to, v, keyName(from))
	}
}

// criSnapshotter carries the snapshotter CRI unpacks images with, if
// Flotilla has it: its own overlayfs and native, or a remote one.
func (c *converter) criSnapshotter(from []string) {
	v, ok := c.str(from...)
	if !ok || v == "" {
		return
	}
	_, proxy := lookup(c.in, []string{"proxy_plugins", v})
	if v != "overlayfs" && v != "native" && !proxy {
		c.note("%s = %s: not carried over: Flotilla runs the overlayfs and native snapshotters, and remote ones (proxy_plugins); cri keeps overlayfs", keyName(from), value(v))
		return
	}
	c.set(criKey("snapshotter"), v, keyName(from))
}

// cni carries where CNI's plugins and network configurations are.
func (c *converter) cni(table []string) {
	key := func(k string) []string { return append(append([]string{}, table...), k) }
	// containerd before 2.1 had one directory, bin_dir.
	if v, ok := c.get(key("bin_dirs")...); ok && len(strings_(v)) > 0 {
		c.set(criKey("cni", "bin_dirs"), strings_(v), keyName(key("bin_dirs")))
		c.use(key("bin_dir")...)
	} else if v, ok := c.str(key("bin_dir")...); ok && v != "" {
		c.set(criKey("cni", "bin_dirs"), []string{v}, keyName(key("bin_dir")))
	}
	if v, ok := c.str(key("conf_dir")...); ok && v != "" {
		c.set(criKey("cni", "conf_dir"), v, keyName(key("conf_dir")))
	}
	if v, ok := c.get(key("max_conf_num")...); ok && !c.isDefault(key("max_conf_num"), v) {
		c.note("%s = %s: not carried over: Flotilla's cri takes the first network configuration alone", keyName(key("max_conf_num")), value(v))
	}
}

// registry carries the hosts directory, and from containerd's deprecated
// per-registry tables the hosts pulled from without verifying certificates.
func (c *converter) registry(table []string) {
	key := func(parts ...string) []string { return append(append([]string{}, table...), parts...) }
	if v, ok := c.str(key("config_path")...); ok && v != "" {
		c.set(criKey("registry", "config_path"), v, keyName(key("config_path")))
	}
	configs, _ := lookup(c.in, key("configs"))
	hosts, _ := configs.(map[string]any)
	var insecure []string
	for _, host := range sortedKeys(hosts) {
		if v, ok := c.get(key("configs", host, "tls", "insecure_skip_verify")...); ok && v == true {
			insecure = append(insecure, host)
		}
	}
	if len(insecure) > 0 {
		c.set(criKey("insecure_registries"), insecure, keyName(key("configs"))+".<host>.tls.insecure_skip_verify")
		c.note("%s.<host>.tls.insecure_skip_verify: carried over as insecure_registries, which also allows plain HTTP to those hosts", keyName(key("configs")))
	}
	for _, k := range []string{"mirrors", "configs", "auths", "headers"} {
		if v, ok := lookup(c.in, key(k)); ok && !isEmptyTree(v) && !(k == "configs" && onlyInsecure(v)) {
			c.note("%s: not carried over: containerd deprecated it for hosts.toml files under config_path, which Flotilla reads as containerd does (containerd's docs/hosts.md)", keyName(key(k)))
		}
		c.use(key(k)...)
	}
}

// runtimes carries the runtime handlers: each one's shim type, options
// and annotations passed through, and the default's name. What Flotilla's
// handlers lack (runtime_path, privileged_without_host_devices, a
// snapshotter or sandboxer of their own...) is left for leftOver to note.
func (c *converter) runtimes(table []string) {
	key := func(parts ...string) []string { return append(append([]string{}, table...), parts...) }
	c.carry(key("default_runtime_name"), criKey("default_runtime_name"))
	v, _ := lookup(c.in, key("runtimes"))
	runtimes, _ := v.(map[string]any)
	for _, name := range sortedKeys(runtimes) {
		r := key("runtimes", name)
		to := func(parts ...string) []string { return criKey(append([]string{"runtimes", name}, parts...)...) }
		c.carry(append(r, "runtime_type"), to("runtime_type"))
		c.carry(append(r, "pod_annotations"), to("pod_annotations"))
		c.carry(append(r, "container_annotations"), to("container_annotations"))
		ov, _ := c.get(append(r, "options")...)
		opts, _ := ov.(map[string]any)
		for _, k := range sortedKeys(opts) {
			from := append(append([]string{}, r...), "options", k)
			if k == "SystemdCgroup" {
				if opts[k] == true {
					c.note("%s = true: not carried over: Flotilla's containers' cgroups are cgroupfs ones; give the kubelet cgroupDriver: cgroupfs", keyName(from))
				}
				continue
			}
			c.set(to("options", k), opts[k], keyName(from))
		}
	}
	// The runtimes containerd 1.x had before runtimes.<name>.
	for _, k := range []string{"default_runtime", "untrusted_workload_runtime"} {
		if v, ok := c.str(key(k, "runtime_type")...); ok && v != "" {
			c.note("%s (runtime_type %q): not carried over: name it under runtimes.<name> (%s)", keyName(key(k)), v, runcV2)
			c.use(key(k)...)
		}
	}
}

// cdi carries the CDI spec directories. containerd 2.x always enables
// CDI, whatever enable_cdi says, and so does Flotilla by default.
func (c *converter) cdi(table []string) {
	key := func(parts ...string) []string { return append(append([]string{}, table...), parts...) }
	c.carry(key("cdi_spec_dirs"), criKey("cdi_spec_dirs"))
	if v, ok := c.get(key("enable_cdi")...); ok && v == false {
		c.note("%s = false: not carried over: containerd 2.x enables CDI always; Flotilla's [services.cri.options] enable_cdi = false turns it off", keyName(key("enable_cdi")))
	}
}

// snapshotters carries the overlayfs snapshotter's mount options.
func (c *converter) snapshotters() {
	from := plugin(overlayfs, "mount_options")
	if v, ok := c.get(from...); ok && len(strings_(v)) > 0 {
		c.set([]string{"snapshotters", "overlayfs", "options", "mount_options"}, strings_(v), keyName(from))
	}
}

// hint says where Flotilla's counterpart of a setting is, if it has one
// worth pointing at.
func hint(path []string) string {
	if len(path) == 1 && path[0] == "oom_score" {
		return " (deploy/flotilla.service gives flotillad OOMScoreAdjust=-999)"
	}
	if len(path) < 2 || path[0] != "plugins" {
		return ""
	}
	switch path[1] {
	case "io.containerd.gc.v1.scheduler":
		return " (Flotilla's garbage collection: [services.metadata.options] gc_schedule and gc_delete_delay)"
	case "io.containerd.runtime.v2.task", "io.containerd.service.v1.tasks-service", "io.containerd.shim.v1.manager":
		return " (Flotilla's tasks service: [services.tasks.options])"
	case "io.containerd.internal.v1.opt":
		return " (Flotilla has no opt plugin)"
	}
	return ""
}

// strings_ reads a TOML array of strings.
func strings_(v any) []string {
	var out []string
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			out = append(out, fmt.Sprint(e))
		}
	case []string:
		out = v
	case string:
		out = []string{v}
	}
	return out
}

// isEmptyTree says whether v holds no value but empty tables.
func isEmptyTree(v any) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	for _, e := range m {
		if !isEmptyTree(e) {
			return false
		}
	}
	return true
}

// onlyInsecure says whether registry configs say nothing but
// tls.insecure_skip_verify, which is carried over.
func onlyInsecure(v any) bool {
	hosts, _ := v.(map[string]any)
	for _, h := range hosts {
		hm, _ := h.(map[string]any)
		for k, e := range hm {
			if k != "tls" {
				if !isEmptyTree(e) {
					return false
				}
				continue
			}
			tls, _ := e.(map[string]any)
			for tk, tv := range tls {
				if tk != "insecure_skip_verify" && !isZero(tv) {
					return false
				}
			}
		}
	}
	return true
}
